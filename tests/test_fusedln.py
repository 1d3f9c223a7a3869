"""The fused residual-add + LayerNorm Pallas kernels (Pallas' interpreter on a CPU) against NumPy,
the plain ``jax.numpy`` reference and Keras' LayerNormalization, and the switch that puts them in
the encoder blocks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types

import keras
import numpy as np

import pytest

from conftest import ROOT
from vitkit.errors import ConfigError
from vitkit.models.blocks import FUSED_LAYERNORM, EncoderBlock, _recent_nvidia_gpu, fused_layer_norm_wanted

jax = pytest.importorskip("jax")
jnp = jax.numpy
fusedln = pytest.importorskip("vitkit.models.fusedln")

EPSILON = 1e-6
ROWS = (3, 197)  # 591 rows: not a multiple of any tile
# Largest difference allowed, relative to the largest magnitude of the compared array: float32
# agrees to rounding; bfloat16 outputs are one rounding (2^-8) apart at most.
TOLERANCE = {"float32": 2e-5, "bfloat16": 1e-2}


def _inputs(width: int, dtype: str, seed: int = 0):
    """``x, r, gamma, beta`` and the cotangents ``ds, dy``, with a non-zero mean per row."""
    rng = np.random.default_rng(seed)
    shape = (*ROWS, width)
    x = (rng.normal(size=shape) * 2 + rng.normal(size=(*ROWS, 1))).astype("float32")
    r = rng.normal(size=shape).astype("float32")
    gamma, beta = (rng.normal(size=width).astype("float32") for _ in range(2))
    ds, dy = (rng.normal(size=shape).astype("float32") for _ in range(2))
    as_type = lambda a: jnp.asarray(a).astype(dtype)  # noqa: E731
    return as_type(x), as_type(r), jnp.asarray(gamma), jnp.asarray(beta), as_type(ds), as_type(dy)


def _numpy_add_layer_norm(x, r, gamma, beta, ds, dy):
    """``(s, y), (dx, dgamma, dbeta)`` in float64 from the textbook formulas (``dr`` is ``dx``)."""
    x, r, gamma, beta, ds, dy = (np.asarray(a, dtype="float64") for a in (x, r, gamma, beta, ds, dy))
    s = x + r
    mean = s.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((s - mean) ** 2).mean(-1, keepdims=True) + EPSILON)
    normed = (s - mean) * rstd
    scaled = dy * gamma
    dx = ds + rstd * (scaled - scaled.mean(-1, keepdims=True) - normed * (scaled * normed).mean(-1, keepdims=True))
    axes = tuple(range(dy.ndim - 1))
    return (s, normed * gamma + beta), (dx, (dy * normed).sum(axes), dy.sum(axes))


def _close(actual, expected, dtype: str) -> None:
    actual, expected = np.asarray(actual, dtype="float64"), np.asarray(expected, dtype="float64")
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual - expected).max()) <= TOLERANCE[dtype] * scale


def _vjp(function, x, r, gamma, beta, ds, dy, **options):
    (s, y), pullback = jax.vjp(lambda *a: function(*a, EPSILON, **options), x, r, gamma, beta)
    return (s, y), pullback((ds, dy))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("width", [32, 768])
def test_add_layer_norm_matches_numpy_and_the_reference(width, dtype):
    x, r, gamma, beta, ds, dy = _inputs(width, dtype)
    (s, y), (dx, dr, dgamma, dbeta) = _vjp(fusedln.add_layer_norm, x, r, gamma, beta, ds, dy)
    assert s.dtype == y.dtype == dx.dtype == dr.dtype == jnp.dtype(dtype)
    assert dgamma.dtype == dbeta.dtype == jnp.float32
    (s_ref, y_ref), grads_ref = _vjp(fusedln.reference_add_layer_norm, x, r, gamma, beta, ds, dy)
    np.testing.assert_array_equal(np.asarray(s, "float32"), np.asarray(s_ref, "float32"))
    for actual, expected in zip((y, dx, dr, dgamma, dbeta), (y_ref, *grads_ref)):
        _close(actual, expected, dtype)
    # NumPy in float64 from the rounded sum, as the kernel normalises the stored s.
    (_, y_np), (dx_np, dgamma_np, dbeta_np) = _numpy_add_layer_norm(s, 0, gamma, beta, ds, dy)
    for actual, expected in zip((y, dx, dr, dgamma, dbeta), (y_np, dx_np, dx_np, dgamma_np, dbeta_np)):
        _close(actual, expected, dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer_norm_without_the_add(dtype):
    x, _, gamma, beta, _, dy = _inputs(768, dtype, seed=1)
    y, pullback = jax.vjp(lambda *a: fusedln.layer_norm(*a, EPSILON), x, gamma, beta)
    dx, dgamma, dbeta = pullback(dy)
    (_, y_np), grads_np = _numpy_add_layer_norm(x, 0, gamma, beta, np.zeros(x.shape), dy)
    for actual, expected in zip((y, dx, dgamma, dbeta), (y_np, *grads_np)):
        _close(actual, expected, dtype)


@pytest.mark.parametrize("options", [{"block_rows": 1}, {"block_rows": 16, "backward_programs": 3}])
def test_other_tilings_give_the_same_result(options):
    x, r, gamma, beta, ds, dy = _inputs(32, "float32", seed=2)
    (_, y), grads = _vjp(fusedln.add_layer_norm, x, r, gamma, beta, ds, dy, **options)
    (_, y_ref), grads_ref = _vjp(fusedln.add_layer_norm, x, r, gamma, beta, ds, dy)
    for actual, expected in zip((y, *grads), (y_ref, *grads_ref)):
        _close(actual, expected, "float32")


def test_plan_for_a_vit_b_stream():
    plan = fusedln.plan(128 * 197, 768, True, EPSILON, interpret=False)
    assert (plan.rows, plan.width, plan.num_warps) == (2, 1024, 4)
    assert fusedln.plan(591, 32, True, EPSILON).rows == 64
    assert fusedln.plan(3, 32, True, EPSILON).rows == 4
    with pytest.raises(ValueError, match="power of two"):
        fusedln.plan(591, 32, True, EPSILON, block_rows=3)


@pytest.mark.parametrize("add", [True, False])
def test_the_kernels_lower_to_triton_for_cuda(add):
    """What a GPU would compile, lowered here: one Triton call forward and one backward."""
    x, r, gamma, beta, ds, dy = (a[:4] if a.ndim > 1 else a for a in _inputs(768, "bfloat16"))

    def both(x, r, gamma, beta, ds, dy):
        return _vjp(fusedln.add_layer_norm, x, r if add else None, gamma, beta, ds, dy, interpret=False)

    text = jax.jit(both).trace(x, r, gamma, beta, ds, dy).lower(lowering_platforms=("cuda",)).as_text()
    assert re.findall(r"custom_call @([\w$.]+)", text) == ["__gpu$xla.gpu.triton"] * 2
    names = ["add_layer_norm", "add_layer_norm_grad"] if add else ["layer_norm", "layer_norm_grad"]
    assert re.findall(r'name = "(\w+)"', text) == names


def test_rows_too_wide_or_mixed_types_take_the_reference(monkeypatch):
    monkeypatch.setattr(fusedln, "_fused", None)  # any use of the kernels would fail
    x, r, gamma, beta, _, _ = _inputs(32, "float32")
    s, y = fusedln.add_layer_norm(x, r.astype("bfloat16"), gamma, beta)
    assert s.dtype == jnp.float32
    monkeypatch.setattr(fusedln, "MAX_WIDTH", 16)
    _close(fusedln.add_layer_norm(x, r, gamma, beta)[1], fusedln.reference_add_layer_norm(x, r, gamma, beta)[1],
           "float32")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_matches_keras_layer_normalization(dtype):
    x, r, gamma, beta, _, _ = _inputs(768, dtype, seed=3)
    layer = keras.layers.LayerNormalization(epsilon=EPSILON, dtype="mixed_" + dtype if dtype != "float32" else dtype)
    layer.build(x.shape)
    layer.set_weights([np.asarray(gamma), np.asarray(beta)])
    s, y = fusedln.add_layer_norm(x, r, gamma, beta, EPSILON)
    expected = layer(keras.ops.cast(np.asarray(s, "float32"), dtype))  # s is exact in its type
    assert keras.backend.standardize_dtype(expected.dtype) == dtype
    _close(y, keras.ops.convert_to_numpy(keras.ops.cast(expected, "float32")), dtype)


def test_gradients_match_keras_layer_normalization_on_jax():
    if keras.backend.backend() != "jax":
        pytest.skip("Keras' gradients are taken on its JAX backend (the slow test below)")
    x, r, gamma, beta, ds, dy = _inputs(768, "float32", seed=4)
    layer = keras.layers.LayerNormalization(epsilon=EPSILON)
    layer.build(x.shape)

    def keras_add_norm(x, r, gamma, beta, epsilon):
        s = x + r
        return s, layer.stateless_call([gamma, beta], [], s)[0]

    (_, y), grads = _vjp(fusedln.add_layer_norm, x, r, gamma, beta, ds, dy)
    (_, y_keras), grads_keras = _vjp(keras_add_norm, x, r, gamma, beta, ds, dy)
    for actual, expected in zip((y, *grads), (y_keras, *grads_keras)):
        _close(actual, expected, "float32")


def test_the_switch(monkeypatch):
    monkeypatch.setenv(FUSED_LAYERNORM, "yes")
    with pytest.raises(ConfigError, match="VITKIT_FUSED_LAYERNORM must be 0, 1 or interpret"):
        fused_layer_norm_wanted()
    on_jax = keras.backend.backend() == "jax"
    on_gpu = on_jax and _recent_nvidia_gpu(jax.devices()[0])
    for mode, wanted in (("0", False), ("", on_gpu), ("1", on_gpu),
                         ("interpret", on_jax)):
        monkeypatch.setenv(FUSED_LAYERNORM, mode)
        assert fused_layer_norm_wanted() is wanted
        assert EncoderBlock(32, 4, 64).fused_norm is wanted


def test_the_kernels_are_for_nvidia_gpus_from_ampere_on():
    def device(platform, capability=None):
        return types.SimpleNamespace(platform=platform, **({"compute_capability": capability} if capability else {}))

    assert _recent_nvidia_gpu(device("gpu", "9.0")) and _recent_nvidia_gpu(device("gpu", "8.0"))
    assert not _recent_nvidia_gpu(device("gpu", "7.5"))  # Turing
    assert not _recent_nvidia_gpu(device("gpu", "gfx90a"))  # an AMD GPU
    assert not _recent_nvidia_gpu(device("gpu")) and not _recent_nvidia_gpu(device("cpu"))


def _tiny_vit_step(model, x, y):
    """The output and the loss' gradients of a stateless forward pass."""
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable):
        out = model.stateless_call(trainable, non_trainable, x)[0]
        return keras.losses.categorical_crossentropy(y, out).mean(), out

    jaxpr = str(jax.make_jaxpr(loss)(trainable))
    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
    return "pallas_call" in jaxpr, np.asarray(out, "float32"), [np.asarray(g, "float32") for g in grads]


def _relative_error(actual, expected) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_tiny_vit_with_the_switch_on_matches_plain_on_jax(monkeypatch, tiny_model, policy):
    """Against the plain float32 model, the fused model is as close as the plain one of its policy."""
    if keras.backend.backend() != "jax":
        pytest.skip("the switch engages on the JAX backend only (the slow test below)")
    previous = keras.config.dtype_policy()
    models = {}
    try:
        for name, switch, chosen in (("fused", "interpret", policy), ("plain", "0", policy), ("truth", "0", "float32")):
            monkeypatch.setenv(FUSED_LAYERNORM, switch)
            keras.config.set_dtype_policy(chosen)
            models[name] = tiny_model(classes=("a", "b", "c"))
    finally:
        keras.config.set_dtype_policy(previous)
    assert [v.path for v in models["fused"].weights] == [v.path for v in models["plain"].weights]
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("float32")
    y = np.eye(3, dtype="float32")
    steps = {}
    for name, model in models.items():
        model.set_weights(models["fused"].get_weights())
        steps[name] = _tiny_vit_step(model, x, y)
    assert [used for used, _, _ in steps.values()] == [True, False, False]
    margin = 1e-5 if policy == "float32" else 1e-2
    fused, plain, truth = ([out, *grads] for _, out, grads in steps.values())
    for fused_part, plain_part, true_part in zip(fused, plain, truth):
        if np.abs(true_part).max() > 1e-4:  # the key bias has no gradient: only rounding
            assert _relative_error(fused_part, true_part) <= 1.5 * _relative_error(plain_part, true_part) + margin


@pytest.mark.slow
def test_the_keras_parts_on_jax():
    if keras.backend.backend() == "jax":
        pytest.skip("already on JAX")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           "-k", "keras or tiny_vit or switch", __file__], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "6 passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
