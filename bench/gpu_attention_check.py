"""Check on a GPU that vitkit's fused attention equals the explicit softmax path, values and gradients.

CI has no GPU, so the cuDNN path (padded odd-length sequences with sequence lengths) is checked
here on the GPU machine: random inputs of a ViT's shapes, float32 reference, relative error of the
output and of the gradients with respect to query, key and value, in bf16 and fp32. Odd lengths
are checked both ways vitkit pads them: by the attention itself, and by the backbone once for
all blocks (``valid_length``; the padding token then holds random values, which must not count).

Usage (GPU machine)::

    KERAS_BACKEND=jax python bench/gpu_attention_check.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vitkit.models.backbone import _cudnn_attention, fused_attention


def reference(query, key, value):
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / np.sqrt(query.shape[-1])
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), value)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    print(f"device: {jax.devices()[0].device_kind}")
    for dtype in (jnp.bfloat16, jnp.float32):
        for tokens in (197, 50, 65):
            keys = jax.random.split(jax.random.PRNGKey(tokens), 4)
            shape = (8, tokens, 12, 64)
            q, k, v = (jax.random.normal(key, shape, jnp.float32) for key in keys[:3])
            upstream = jax.random.normal(keys[3], shape, jnp.float32)

            def loss(function, precision, q, k, v):
                out = function(q.astype(precision), k.astype(precision), v.astype(precision))
                return jnp.sum(out.astype(jnp.float32) * upstream), out

            padding = jax.random.normal(keys[3], (shape[0], 1, *shape[2:]), jnp.float32)

            def fused(*tensors):
                return fused_attention(*tensors, training=True)

            def fused_padded_once(*tensors):
                tensors = [jnp.concatenate([t, padding.astype(t.dtype)], axis=1) for t in tensors]
                return fused_attention(*tensors, training=True, valid_length=tokens)[:, :tokens]

            exact = jax.jit(jax.value_and_grad(lambda *a: loss(reference, jnp.float32, *a), argnums=(0, 1, 2),
                                               has_aux=True))
            (_, out_ref), grads_ref = exact(q, k, v)
            arms = [("as the blocks call it", fused)]
            if tokens % 2:
                arms.append(("padded once by the backbone", fused_padded_once))
            for arm, function in arms:
                fast = jax.jit(jax.value_and_grad(lambda *a: loss(function, dtype, *a), argnums=(0, 1, 2),
                                                  has_aux=True))
                (_, out_fast), grads_fast = fast(q, k, v)
                errors = [relative_error(out_fast, out_ref)] + [
                    relative_error(g, r) for g, r in zip(grads_fast, grads_ref)]
                path = "cuDNN" if _cudnn_attention(*(t.astype(dtype) for t in (q, k, v)),
                                                   pad_to_even=bool(tokens % 2)) is not None else "XLA"
                print(f"{jnp.dtype(dtype).name:>8} tokens {tokens:>3} ({path:>5}, {arm}): output {errors[0]:.2e}, "
                      f"grad q/k/v {errors[1]:.2e} {errors[2]:.2e} {errors[3]:.2e}")


if __name__ == "__main__":
    main()
