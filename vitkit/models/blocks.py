"""The encoder block (pre-norm attention and MLP with residuals, stochastic depth) and its GELUs."""

from __future__ import annotations

import functools
import math
import os

import keras
from keras import ops

from vitkit.errors import ConfigError
from vitkit.models.attention import MultiHeadSelfAttention

FUSED_LAYERNORM = "VITKIT_FUSED_LAYERNORM"


def fused_layer_norm_wanted() -> bool:
    """Whether new encoder blocks run their LayerNorms (and the residual add before the second)
    as the Pallas kernels of :mod:`vitkit.models.fusedln`.

    On the JAX backend with an NVIDIA GPU of compute capability 8.0 or more (Ampere on, where
    Triton compiles them; measured on Hopper), where they make a ViT-B/16 training step about 4%
    faster (bench/README.md); the environment variable ``VITKIT_FUSED_LAYERNORM`` says otherwise: ``0``
    turns them off, ``interpret`` engages them on the JAX backend with any device (Pallas'
    interpreter off GPUs, for tests). Never under a Keras distribution: the kernels are
    single-device calls the partitioner would gather. The weights are the same either way.
    """
    mode = os.environ.get(FUSED_LAYERNORM) or "1"
    if mode not in ("0", "1", "interpret"):
        raise ConfigError(f"{FUSED_LAYERNORM} must be 0, 1 or interpret, not {mode!r}")
    if mode == "0" or keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
        return False
    import jax

    return mode == "interpret" or _recent_nvidia_gpu(jax.devices()[0])


def _recent_nvidia_gpu(device) -> bool:
    """Whether ``device`` is an NVIDIA GPU of compute capability 8.0 or more."""
    capability = getattr(device, "compute_capability", None)  # CUDA devices only
    try:
        return device.platform == "gpu" and capability is not None and float(capability) >= 8.0
    except ValueError:
        return False


def gelu_tanh(x):
    """GELU in its tanh approximation, the form of tensorflow-addons' default ``gelu``."""
    return keras.activations.gelu(x, approximate=True)


keras.saving.register_keras_serializable(package="vitkit", name="gelu_tanh")(gelu_tanh)


# The rational approximation of erf that XLA and Eigen use for float32 (error below 1e-7):
# erf(x) = x * P(x^2) / Q(x^2) on [-4, 4], and +-1 beyond.
_ERF_NUMERATOR = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                  -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                  -1.60960333262415e-02)
_ERF_DENOMINATOR = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                    -7.37332916720468e-03, -1.42647390514189e-02)


def _erf(x):
    """``erf`` from additions, products and one division, in float32, on every backend."""
    x = ops.clip(ops.cast(x, "float32"), -4.0, 4.0)
    square = x * x
    numerator, denominator = _ERF_NUMERATOR[0], _ERF_DENOMINATOR[0]
    for coefficient in _ERF_NUMERATOR[1:]:
        numerator = numerator * square + coefficient
    for coefficient in _ERF_DENOMINATOR[1:]:
        denominator = denominator * square + coefficient
    return x * numerator / denominator


def _gelu_exact(x):
    """Exact GELU, ``x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))``.

    ``keras.activations.gelu`` uses ``erfc`` on JAX, which XLA evaluates with two branches and an
    exponential: the MLP activation took twice as long on a GPU as the same GELU in PyTorch
    (bench/gpu_kernel_profile.py). ``erf`` is the single-branch form; it is written out rather
    than taken from ``keras.ops.erf`` because JAX exports that as an operation TensorFlow's
    SavedModel loader does not know, which would stop JAX-trained models being served. Other
    backends have a native exact GELU (one kernel on a CPU, where the written-out ``erf`` would
    be a dozen passes over the MLP's largest tensor), and use it.
    """
    if keras.backend.backend() != "jax":
        return keras.activations.gelu(x, approximate=False)
    return _jax_gelu_exact()(x)


def _gelu_forward(x):
    return ops.cast(ops.cast(0.5 * x, "float32") * (1.0 + _erf(x * math.sqrt(0.5))), x.dtype)


def _gelu_backward(x, upstream):
    """``upstream * (Phi(x) + x phi(x))``, the GELU's derivative, in float32."""
    x32 = ops.cast(x, "float32")
    cdf = 0.5 * (1.0 + _erf(x32 * math.sqrt(0.5)))
    density = ops.exp(-0.5 * x32 * x32) * (1.0 / math.sqrt(2.0 * math.pi))
    return ops.cast(ops.cast(upstream, "float32") * (cdf + x32 * density), x.dtype)


@functools.cache
def _jax_gelu_exact():
    """Exact GELU with its derivative written out (JAX only).

    Differentiating the rational ``erf`` automatically keeps a dozen float32 intermediates of
    the MLP's largest tensor for the backward pass, and the gradient then read them back: a
    third of a ViT-B/16 step's element-wise GPU time (bench/gpu_kernel_profile.py). The
    derivative needs only the input, kept in its own (bfloat16 under mixed precision) type.
    """
    import jax

    gelu = jax.custom_vjp(_gelu_forward)
    gelu.defvjp(lambda x: (_gelu_forward(x), x), lambda x, upstream: (_gelu_backward(x, upstream),))
    return gelu


@keras.saving.register_keras_serializable(package="vitkit")
class MlpBlock(keras.layers.Layer):
    """``Dense_0`` -> exact GELU -> dropout -> ``Dense_1`` -> dropout."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.dense_0 = keras.layers.Dense(mlp_dim, activation=_gelu_exact, name="Dense_0")
        self.dense_1 = keras.layers.Dense(hidden_size, name="Dense_1")
        self.dropout_layer = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        self.dense_0.build(input_shape)
        self.dense_1.build((*input_shape[:-1], self.mlp_dim))

    def call(self, x, training=None):
        x = self.dropout_layer(self.dense_0(x), training=training)
        return self.dropout_layer(self.dense_1(x), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="vitkit")
class LayerScale(keras.layers.Layer):
    """Multiplies its input by a learned per-channel ``gamma`` that starts at ``init_value``."""

    def __init__(self, init_value: float, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],), initializer=keras.initializers.Constant(self.init_value), name="gamma",
        )

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package="vitkit")
class EncoderBlock(keras.layers.Layer):
    """Pre-norm transformer block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``.

    ``drop_path`` is the probability of skipping the block's residual branches for a sample
    during training (stochastic depth); at inference the branches are always used. With
    ``layer_scale`` (a start value) each branch is multiplied by a :class:`LayerScale`
    (``LayerScale_attention``, ``LayerScale_mlp``) before it is added.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        seed: int | None = None,
        locality_attention: bool = False,
        layer_scale: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.drop_path = drop_path
        self.seed = seed
        self.locality_attention = locality_attention
        self.norm_0 = keras.layers.LayerNormalization(epsilon=1e-6, name="LayerNorm_0")
        self.attention = MultiHeadSelfAttention(
            hidden_size, num_heads, attention_dropout, locality=locality_attention,
            name="MultiHeadDotProductAttention_1",
        )
        self.attention_output_dropout = keras.layers.Dropout(dropout)
        self.norm_2 = keras.layers.LayerNormalization(epsilon=1e-6, name="LayerNorm_2")
        self.mlp = MlpBlock(hidden_size, mlp_dim, dropout, name="MlpBlock_3")
        self.layer_scale = layer_scale
        if layer_scale is not None:
            self.scale_attention = LayerScale(layer_scale, name="LayerScale_attention")
            self.scale_mlp = LayerScale(layer_scale, name="LayerScale_mlp")
        if drop_path > 0:
            self.seed_generator = keras.random.SeedGenerator(seed)
        self.fused_norm = fused_layer_norm_wanted()

    def build(self, input_shape):
        scales = (self.scale_attention, self.scale_mlp) if self.layer_scale is not None else ()
        for layer in (self.norm_0, self.attention, self.norm_2, self.mlp, *scales):
            layer.build(input_shape)

    def _scaled(self, branch, scale: str):
        return branch if self.layer_scale is None else getattr(self, scale)(branch)

    def _residual(self, branch, training):
        if not training or self.drop_path <= 0:
            return branch
        keep = 1.0 - self.drop_path
        shape = (ops.shape(branch)[0], 1, 1)
        mask = keras.random.uniform(shape, seed=self.seed_generator) < keep
        return branch * ops.cast(mask, branch.dtype) / keep

    def _add_norm(self, norm: keras.layers.LayerNormalization, x, branch=None):
        """``(s, norm(s))`` with ``s = x + branch`` (``x`` without a branch), fused when engaged."""
        if not self.fused_norm:
            s = x if branch is None else x + branch
            return s, norm(s)
        from vitkit.models import fusedln

        s, normed = fusedln.add_layer_norm(x, branch, norm.gamma.value, norm.beta.value, norm.epsilon)
        return s, ops.cast(normed, norm.compute_dtype)

    def call(self, x, training=None, return_attention: bool = False, attention_offset=None,
             valid_length: int | None = None):
        attended = self.attention(
            self._add_norm(self.norm_0, x)[1], training=training, return_attention=return_attention,
            attention_offset=attention_offset, valid_length=valid_length,
        )
        if return_attention:
            attended, weights = attended
        attended = self._scaled(self.attention_output_dropout(attended, training=training), "scale_attention")
        x, normed = self._add_norm(self.norm_2, x, self._residual(attended, training))
        mixed = self._scaled(self.mlp(normed, training=training), "scale_mlp")
        x = x + self._residual(mixed, training)
        return (x, weights) if return_attention else x

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "drop_path": self.drop_path,
            "seed": self.seed,
            "locality_attention": self.locality_attention,
            "layer_scale": self.layer_scale,
        }
