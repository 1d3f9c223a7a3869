"""Self-attention of the ViT blocks: the fused kernel path and the explicit path that returns the
attention weights."""

from __future__ import annotations

import math

import keras
from keras import ops


def fused_attention(query, key, value, training: bool = False, mask=None, valid_length: int | None = None):
    """``softmax(q k^T / sqrt(d)) v`` for ``(batch, tokens, heads, head_dim)`` inputs, fused.

    Uses the backend's fused kernel through ``keras.ops.dot_product_attention``. On JAX the
    kernel is cuDNN's, chosen here rather than by Keras, for two reasons. cuDNN computes
    gradients only for sequences of even length, and a ViT has ``1 + patches`` tokens, usually
    an odd number, so Keras would fall back to unfused attention for training; there the
    sequence is padded by one token that cuDNN's sequence lengths hide, and the extra row is
    dropped: the same result, with the fused kernel in both directions. And where cuDNN cannot
    run a shape (small models, some lengths) Keras logs a traceback before falling back; here
    the fallback to XLA's attention is silent. ``mask`` (broadcastable to ``(batch, heads,
    tokens, tokens)``, True where attention is allowed) is passed through.

    ``valid_length``: the sequence already ends in padding tokens from this index on (the
    backbone pads once for all its blocks); they are ignored as keys, and their own outputs are
    of no meaning.
    """
    on_jax = keras.backend.backend() == "jax"
    fused = _jax_fused_attention(query, key, value, training, mask, valid_length) if on_jax else None
    if fused is not None:
        return fused
    options = {"flash_attention": False} if on_jax else {}
    return ops.dot_product_attention(query, key, value, mask=with_valid_keys(mask, valid_length, key.shape[1]),
                                     **options)


def with_valid_keys(mask, valid_length: int | None, length: int):
    """``mask`` that also ignores the keys from ``valid_length`` on (``mask`` alone without it)."""
    if valid_length is None:
        return mask
    valid = ops.reshape(ops.arange(length) < valid_length, (1, 1, 1, length))
    return valid if mask is None else ops.logical_and(mask, valid)


def _jax_fused_attention(query, key, value, training: bool, mask, valid_length: int | None):
    """cuDNN attention for :func:`fused_attention` on JAX, or None where it cannot run."""
    length = query.shape[1]
    odd_in_training = bool(training and length is not None and length % 2)
    if valid_length is None and not odd_in_training:
        return _cudnn_attention(query, key, value, mask)
    if mask is not None:  # cuDNN takes a mask or sequence lengths, not both
        return None
    return _cudnn_attention(query, key, value, pad_to_even=valid_length is None, valid_length=valid_length)


def _cudnn_attention(query, key, value, mask=None, pad_to_even: bool = False, valid_length: int | None = None):
    """cuDNN attention, or None where cuDNN cannot run it (no NVIDIA GPU, unsupported shape or
    dtype). ``pad_to_even`` pads the sequence by one token for the call; ``valid_length`` says
    the sequence already ends in padding from that index on."""
    import jax
    import jax.numpy as jnp

    length = query.shape[1]
    options = {} if mask is None else {"mask": mask}
    if pad_to_even:
        padding = [(0, 0), (0, 1), (0, 0), (0, 0)]
        query, key, value = (jnp.pad(tensor, padding) for tensor in (query, key, value))
        valid_length = length
    if valid_length is not None:
        lengths = jnp.full((query.shape[0],), valid_length, jnp.int32)
        options = {"query_seq_lengths": lengths, "key_value_seq_lengths": lengths}
    try:
        mixed = jax.nn.dot_product_attention(query, key, value, implementation="cudnn", **options)
    except (NotImplementedError, RuntimeError, ValueError, TypeError):
        return None
    return mixed[:, :length]


@keras.saving.register_keras_serializable(package="vitkit")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention with ``query``/``key``/``value``/``out`` projections (D x D).

    ``call(x, return_attention=True)`` also returns the attention weights
    ``(batch, heads, tokens, tokens)``; otherwise the fused attention op is used.

    With ``locality=True`` (locality self-attention, Lee et al. 2021) the scores are divided by
    a learned ``temperature`` (initialized to sqrt(head size), the usual fixed scale) instead of
    the fixed scale, and each token's score for itself is masked out, which sharpens attention
    towards other tokens. Returned weights then have a zero diagonal.
    ``attention_offset`` (same shape) is added to the weights after the softmax; with zeros the
    output is unchanged and its gradient is the gradient with respect to the weights.
    ``valid_length``: the tokens from this index on are padding, ignored as keys.
    """

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.0,
                 locality: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.locality = locality
        self.query = keras.layers.Dense(hidden_size, name="query")
        self.key = keras.layers.Dense(hidden_size, name="key")
        self.value = keras.layers.Dense(hidden_size, name="value")
        self.out = keras.layers.Dense(hidden_size, name="out")
        self.weights_dropout = keras.layers.Dropout(attention_dropout)

    def build(self, input_shape):
        for dense in (self.query, self.key, self.value, self.out):
            dense.build(input_shape)
        if self.locality:
            head_dim = self.hidden_size // self.num_heads
            self.temperature = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(math.sqrt(head_dim)), name="temperature"
            )

    def _split_heads(self, x):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(x, (batch, length, self.num_heads, x.shape[-1] // self.num_heads))

    def _projections(self, x, training=None):
        """Query, key and value of ``x``. In training from one matrix product with the three
        kernels side by side, which made a ViT-B/16 training step on a GPU 1.9% faster than three
        products (bench/gpu_profile.py ``splitqkv``); prediction, 1.8% slower that way, keeps the
        three. The weights stay the three layers that model files name either way."""
        projections = (self.query, self.key, self.value)
        if not training:
            return [self._split_heads(dense(x)) for dense in projections]
        kernel = ops.concatenate([ops.cast(dense.kernel, x.dtype) for dense in projections], axis=-1)
        bias = ops.concatenate([ops.cast(dense.bias, x.dtype) for dense in projections], axis=-1)
        return [self._split_heads(part) for part in ops.split(ops.matmul(x, kernel) + bias, 3, axis=-1)]

    def call(self, x, training=None, return_attention: bool = False, attention_offset=None,
             valid_length: int | None = None):
        query, key, value = self._projections(x, training)
        head_dim = query.shape[-1]
        mask = None
        if self.locality:
            # Scaling the queries by sqrt(d) / temperature turns the fixed 1 / sqrt(d) of both
            # paths into 1 / temperature, so the fused kernel still applies.
            query = query * ops.cast(math.sqrt(head_dim) / self.temperature, query.dtype)
            length = ops.shape(x)[1]
            mask = ops.logical_not(ops.eye(length, dtype="bool"))[None, None]
        explicit = return_attention or attention_offset is not None
        if explicit or (training and self.attention_dropout > 0):
            scores = ops.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)
            scores = ops.cast(scores, "float32")
            mask = with_valid_keys(mask, valid_length, ops.shape(x)[1])
            if mask is not None:
                scores = ops.where(mask, scores, ops.full_like(scores, -1e9))
            weights = ops.softmax(scores, axis=-1)
            if attention_offset is not None:
                weights = weights + ops.cast(attention_offset, weights.dtype)
            mixed = ops.einsum(
                "bhqk,bkhd->bqhd",
                ops.cast(self.weights_dropout(weights, training=training), value.dtype),
                value,
            )
        else:
            weights = None
            mixed = fused_attention(query, key, value, training=bool(training), mask=mask, valid_length=valid_length)
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        output = self.out(ops.reshape(mixed, (batch, length, x.shape[-1])))
        return (output, weights) if return_attention else output

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "attention_dropout": self.attention_dropout,
            "locality": self.locality,
        }
