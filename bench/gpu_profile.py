"""Where a vitkit ViT-B/16 training or prediction step spends its time on the GPU (JAX backend).

Times the same model several ways, so that differences locate the cost. A variant is a kind,
optionally followed by ``:`` and modifiers joined with ``+`` (``compute:splitqkv+plainln``):

- ``compute``: a jitted step on batches already on the device (the model alone);
- ``keras-arrays``: Keras ``fit`` / ``predict`` fed one NumPy batch over and over;
- ``keras-device``: the same fed one batch already on the device (Keras' loop alone);
- ``keras-vitkit``: Keras ``fit`` / ``predict`` fed by vitkit's batch stream, as ``vitkit train``
  / ``vitkit predict`` run (shuffled reads from an image set).

Every kind starts from the model as ``vitkit train`` builds it on a GPU (fused LayerNorm kernels
on). Modifiers:

- ``unpadded`` (the fused op on the raw odd-length sequence, which cuDNN cannot differentiate)
  or ``xla`` (no fused kernel): another attention implementation;
- ``splitqkv``: query, key and value from three matrix products in training (vitkit makes one);
- ``sgd``, ``adamw``, ``flatadam``: another optimizer (plain SGD: the floor of any update; Keras'
  AdamW; Adam over all weights as one flat vector, one update for the model instead of one per
  weight, as fused multi-tensor optimizers do; ``flatadam`` with ``compute`` only);
- ``plainln``: the blocks' LayerNorms as XLA fuses them, without the Pallas kernels of
  vitkit/models/fusedln.py (``VITKIT_FUSED_LAYERNORM=0``); ``fusedln4``: those kernels with tiles
  of four rows (eight warps) instead of the default two;
- ``autogelu``: the MLP's exact GELU differentiated automatically through its written-out
  ``erf``, as before its derivative was written out;
- ``blockpad``: each block pads its query, key and value to an even length for cuDNN, instead
  of the backbone padding the sequence once for all blocks.

Usage (GPU machine)::

    KERAS_BACKEND=jax python bench/gpu_profile.py --batch 128 --steps 30
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VIT_B16 = {"patch_size": 16, "num_layers": 12, "hidden_size": 768, "num_heads": 12, "mlp_dim": 3072}
TINY = {"patch_size": 8, "num_layers": 2, "hidden_size": 32, "num_heads": 4, "mlp_dim": 64}
CLASSES = 10


def _attention_variants():
    """Attention implementations to compare, by name (``vitkit`` is the backbone's own)."""
    import keras

    from vitkit.models.attention import with_valid_keys

    def unpadded(query, key, value, training=False, mask=None, valid_length=None):
        mask = with_valid_keys(mask, valid_length, key.shape[1])
        return keras.ops.dot_product_attention(query, key, value, mask=mask)

    def xla(query, key, value, training=False, mask=None, valid_length=None):
        mask = with_valid_keys(mask, valid_length, key.shape[1])
        return keras.ops.dot_product_attention(query, key, value, mask=mask, flash_attention=False)

    return {"unpadded": unpadded, "xla": xla}


def _separate_projections(self, x, training=None):
    """MultiHeadSelfAttention._projections as three matrix products, one per Dense layer, in
    training too."""
    return [self._split_heads(dense(x)) for dense in (self.query, self.key, self.value)]


class _FlatAdam:
    """Adam over all trainable weights as one flat vector, in the form ``jitted_steps`` calls."""

    def __init__(self, learning_rate: float = 1e-4, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7):
        self.learning_rate, self.beta_1, self.beta_2, self.epsilon = learning_rate, beta_1, beta_2, epsilon

    def build(self, variables) -> None:
        import types

        import jax.numpy as jnp

        self.shapes = [tuple(v.shape) for v in variables]
        size = sum(int(np.prod(shape)) for shape in self.shapes)
        self.variables = [types.SimpleNamespace(value=value) for value in
                          (jnp.zeros(size, "float32"), jnp.zeros(size, "float32"), jnp.zeros((), "float32"))]

    def stateless_apply(self, state, grads, trainable):
        import jax.numpy as jnp

        m, v, step = state
        step = step + 1
        g = jnp.concatenate([grad.astype("float32").ravel() for grad in grads])
        p = jnp.concatenate([weight.ravel() for weight in trainable])
        m = self.beta_1 * m + (1 - self.beta_1) * g
        v = self.beta_2 * v + (1 - self.beta_2) * g * g
        rate = self.learning_rate * jnp.sqrt(1 - self.beta_2 ** step) / (1 - self.beta_1 ** step)
        p = p - rate * m / (jnp.sqrt(v) + self.epsilon)
        ends = np.cumsum([int(np.prod(shape)) for shape in self.shapes])[:-1]
        new = [part.reshape(shape) for part, shape in zip(jnp.split(p, ends), self.shapes)]
        return new, [m, v, step]


MODIFIERS = ("unpadded", "xla", "splitqkv", "sgd", "adamw", "flatadam", "plainln", "fusedln4", "autogelu", "blockpad")


def parse_variant(variant: str) -> tuple[str, frozenset]:
    """``(kind, modifiers)`` of a variant such as ``compute:splitqkv+plainln``."""
    kind, _, rest = variant.partition(":")
    modifiers = frozenset(filter(None, rest.split("+")))
    unknown = modifiers - set(MODIFIERS)
    if kind not in ("compute", "keras-arrays", "keras-device", "keras-vitkit") or unknown:
        raise ValueError(f"unknown variant {variant!r}")
    if "flatadam" in modifiers and kind != "compute":
        raise ValueError("flatadam replaces the optimizer of the jitted step only: use it with compute")
    return kind, modifiers


def _optimizer(modifiers: frozenset):
    import keras

    if "sgd" in modifiers:
        return keras.optimizers.SGD(1e-4)
    if "adamw" in modifiers:
        return keras.optimizers.AdamW(1e-4)
    return keras.optimizers.Adam(1e-4)


def _model(args, modifiers: frozenset):
    import keras

    import vitkit
    import vitkit.models.attention

    from vitkit.models import blocks, fusedln
    from vitkit.models.backbone import VisionTransformer
    from vitkit.models.blocks import FUSED_LAYERNORM, EncoderBlock

    attention = vitkit.models.attention
    attention_variant = next(iter(modifiers & {"unpadded", "xla"}), None)
    _replace(attention, "fused_attention", attention_variant and _attention_variants()[attention_variant])
    _replace(attention.MultiHeadSelfAttention, "_projections", "splitqkv" in modifiers and _separate_projections)
    _replace(VisionTransformer, "_pads_once", "blockpad" in modifiers and (lambda *args: False))
    _replace(blocks, "_jax_gelu_exact", "autogelu" in modifiers and (lambda: blocks._gelu_forward))
    # The tile size is read when the step is traced, after this returns: set for every variant.
    _replace(fusedln, "TILE_ELEMENTS", "fusedln4" in modifiers and 4 * 1024)

    keras.config.set_dtype_policy("mixed_bfloat16")
    switch = os.environ.get(FUSED_LAYERNORM, "0")
    kernels = "plainln" not in modifiers
    # --tiny checks the script on a CPU, where the kernels run in Pallas' interpreter.
    os.environ[FUSED_LAYERNORM] = ("interpret" if args.tiny else "1") if kernels else "0"
    try:
        model = vitkit.build_model(CLASSES, backbone=dict(TINY if args.tiny else VIT_B16),
                                   image_size=args.image_size, augment=False)
    finally:
        os.environ[FUSED_LAYERNORM] = switch
    fused = {layer.fused_norm for layer in model._flatten_layers() if isinstance(layer, EncoderBlock)}
    if fused != {kernels}:
        raise RuntimeError(f"fused LayerNorm kernels engaged: {fused}, wanted {kernels} "
                           "(they need the JAX backend and a GPU)")
    model.compile(optimizer=_optimizer(modifiers), loss="categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=args.steps_per_execution)
    return model


_ORIGINALS: dict = {}


def _replace(owner, name: str, replacement) -> None:
    """Set ``owner.name`` to ``replacement`` for one variant, or, where it is falsy, back to what
    vitkit had before any variant changed it."""
    original = _ORIGINALS.setdefault((owner, name), vars(owner)[name])
    setattr(owner, name, replacement or original)


def jitted_steps(model, optimizer):
    """``(state, train, forward)``: the model's variables as ``(trainable, non_trainable,
    optimizer)`` values, and jitted train and forward steps on them, as Keras' JAX trainer
    builds them (categorical cross-entropy)."""
    import jax
    import keras

    loss_fn = keras.losses.CategoricalCrossentropy()
    optimizer.build(model.trainable_variables)
    state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
             [v.value for v in optimizer.variables])

    def loss(trainable, non_trainable, x, y):
        predicted, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, predicted), non_trainable

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train(trainable, non_trainable, optimizer_variables, x, y):
        (value, non_trainable), grads = jax.value_and_grad(loss, has_aux=True)(trainable, non_trainable, x, y)
        trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads, trainable)
        return trainable, non_trainable, optimizer_variables, value

    @jax.jit
    def forward(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x)[0]

    return state, train, forward


def _compute_steps(model, x, y, modifiers: frozenset = frozenset()):
    """Jitted forward and train steps over device-resident data, as Keras' JAX trainer builds them."""
    import jax

    initial, train, forward = jitted_steps(model, _FlatAdam() if "flatadam" in modifiers else model.optimizer)
    state = dict(zip(("trainable", "non_trainable", "optimizer"), initial))
    x, y = jax.device_put(x), jax.device_put(y)

    def run_train(steps):
        started = time.perf_counter()
        t, n, o = state["trainable"], state["non_trainable"], state["optimizer"]
        for _ in range(steps):
            t, n, o, value = train(t, n, o, x, y)
        value.block_until_ready()
        state.update(trainable=t, non_trainable=n, optimizer=o)
        return time.perf_counter() - started

    def run_forward(steps):
        started = time.perf_counter()
        for _ in range(steps):
            out = forward(state["trainable"], state["non_trainable"], x)
        out.block_until_ready()
        return time.perf_counter() - started

    return run_train, run_forward


def _vitkit_batches(args, pool_x, pool_y):
    from gpu_throughput import _Repeat
    from vitkit.data.batches import ImageBatches
    from vitkit.data.imageset import load_images

    images = load_images((pool_x, pool_y), (args.image_size, args.image_size))
    names = [str(i) for i in range(CLASSES)]

    def make(steps, labelled):
        batches = ImageBatches(images, args.batch, names if labelled else None, shuffle=labelled)
        return _Repeat(batches, steps)

    return make


def _measure(args, variant: str, x, y, pool_x, pool_y) -> dict:
    """Training and prediction images per second of one variant."""
    from gpu_throughput import _array_batches, keras_steps

    kind, modifiers = parse_variant(variant)
    model = _model(args, modifiers)
    if kind == "compute":
        train, forward = _compute_steps(model, x, y, modifiers)
    elif kind == "keras-arrays":
        train, forward = keras_steps(model, _array_batches(x, y))
    elif kind == "keras-device":
        import jax

        train, forward = keras_steps(model, _array_batches(jax.device_put(x), jax.device_put(y)))
    else:
        train, forward = keras_steps(model, _vitkit_batches(args, pool_x, pool_y))
    train(args.warmup)
    train_seconds = train(args.steps)
    forward(args.warmup)
    forward_seconds = forward(args.steps)
    return {"train_images_per_s": args.steps * args.batch / train_seconds,
            "infer_images_per_s": args.steps * args.batch / forward_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 32-wide model: checks the script on a CPU")
    parser.add_argument("--variants", default="compute,compute:blockpad,compute:splitqkv,compute:autogelu,compute:plainln,keras-arrays,keras-vitkit",
                        help="comma-separated KIND[:MODIFIER+...]: kinds compute, keras-arrays, keras-device, keras-vitkit; "
                             f"modifiers {', '.join(MODIFIERS)} (see above)")
    parser.add_argument("--no-xla-defaults", action="store_true", help="leave XLA_FLAGS as they are")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_profile.json")
    args = parser.parse_args()
    for variant in args.variants.split(","):
        parse_variant(variant)  # an unknown one fails before any model is built
    if not args.no_xla_defaults:
        from vitkit.device import configure_xla

        configure_xla()

    rng = np.random.default_rng(0)
    pool = 4 * args.batch
    pool_x = rng.integers(0, 256, (pool, args.image_size, args.image_size, 3), dtype=np.uint8)
    pool_y = np.array([str(i % CLASSES) for i in range(pool)])
    x = pool_x[:args.batch]
    y = np.eye(CLASSES, dtype="float32")[np.arange(args.batch) % CLASSES]

    rows = {}
    for number, variant in enumerate(args.variants.split(",")):
        name = variant if variant not in rows else f"{variant}#{number}"  # a variant repeated to bracket others
        try:
            rows[name] = _measure(args, variant, x, y, pool_x, pool_y)
        except Exception as error:  # one failing variant must not lose the others' figures
            traceback.print_exc()
            rows[name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            print(f"{name:<18} failed: {rows[name]['error'][:300]}", flush=True)
            continue
        print(f"{name:<18} train {rows[name]['train_images_per_s']:8.0f} img/s   "
              f"infer {rows[name]['infer_images_per_s']:8.0f} img/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"batch": args.batch, "steps_per_execution": args.steps_per_execution,
                                    "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
