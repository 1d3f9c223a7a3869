"""The Vision Transformer backbone: the Keras layers that build it (configurations are in ``config``).

Variable paths follow the original Flax checkpoints (and vit-keras), so checkpoints map onto the
model by name::

    vit/embedding/kernel                                       (P, P, 3, D)
    vit/class_token/cls                                        (1, 1, D)
    vit/posembed_input/pos_embedding                           (1, 1 + N, D)
    vit/encoderblock_{i}/LayerNorm_0/{gamma,beta}
    vit/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value,out}/{kernel,bias}
    vit/encoderblock_{i}/LayerNorm_2/{gamma,beta}
    vit/encoderblock_{i}/MlpBlock_3/{Dense_0,Dense_1}/{kernel,bias}
    vit/encoder_norm/{gamma,beta}
    vit/pre_logits/{kernel,bias}                               (only with a representation layer)

Attention runs through ``keras.ops.dot_product_attention`` (fused kernels where the backend has
them) unless the caller asks for the attention weights, which takes the explicit softmax path in
the same forward pass. An ``attention_offset`` (zeros) added to those weights gives explanations
a tensor to differentiate the class scores against, on every backend.

Options for training from scratch on small data (off by default; a model that uses them has
other variables and takes no checkpoint): ``tokenizer="conv"`` puts :class:`ConvStem` (variables
under ``vit/conv_stem``) and ``tokenizer="shifted"`` puts :class:`ShiftedPatchTokenizer` (under
``vit/shifted_patches``) in place of ``embedding``; ``locality_attention=True`` adds a
``temperature`` to every attention layer. The token layout (class token first, then the patch
grid row by row) is the same for all of them.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from vitkit.models.config import ViTConfig


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
    return ops.cast(ops.cast(0.5 * x, "float32") * (1.0 + _erf(x * math.sqrt(0.5))), x.dtype)


def fused_attention(query, key, value, training: bool = False, mask=None):
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
    """
    if keras.backend.backend() != "jax":
        return ops.dot_product_attention(query, key, value, mask=mask)
    length = query.shape[1]
    pad = bool(training and length is not None and length % 2)
    fused = None if pad and mask is not None else _cudnn_attention(query, key, value, mask, pad_to_even=pad)
    if fused is not None:
        return fused
    return ops.dot_product_attention(query, key, value, mask=mask, flash_attention=False)


def _cudnn_attention(query, key, value, mask=None, pad_to_even: bool = False):
    """cuDNN attention (optionally over the sequence padded to even length), or None where
    cuDNN cannot run it (no NVIDIA GPU, unsupported shape or dtype)."""
    import jax
    import jax.numpy as jnp

    length = query.shape[1]
    options = {} if mask is None else {"mask": mask}
    if pad_to_even:
        padding = [(0, 0), (0, 1), (0, 0), (0, 0)]
        query, key, value = (jnp.pad(tensor, padding) for tensor in (query, key, value))
        lengths = jnp.full((query.shape[0],), length, jnp.int32)
        options = {"query_seq_lengths": lengths, "key_value_seq_lengths": lengths}
    try:
        mixed = jax.nn.dot_product_attention(query, key, value, implementation="cudnn", **options)
    except (NotImplementedError, RuntimeError, ValueError, TypeError):
        return None
    return mixed[:, :length]


class PatchTokenizer(keras.layers.Layer):
    """Base of the layers that turn ``(batch, H, W, channels)`` images into
    ``(batch, (H / patch) * (W / patch), hidden_size)`` tokens, patches in row-major order."""

    def __init__(self, patch_size: int, hidden_size: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.hidden_size = hidden_size

    def compute_output_shape(self, input_shape):
        tokens = (input_shape[1] // self.patch_size) * (input_shape[2] // self.patch_size)
        return (input_shape[0], tokens, self.hidden_size)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "hidden_size": self.hidden_size}


@keras.saving.register_keras_serializable(package="vitkit")
class PatchEmbedding(PatchTokenizer):
    """Cuts images into ``patch x patch`` squares and projects each to ``hidden_size`` tokens.

    The same arithmetic as a ``Conv2D`` with kernel and stride ``patch`` and the same variables
    (``kernel`` of shape ``(patch, patch, channels, hidden)`` and ``bias``), computed as one
    matrix product over the flattened patches: on GPUs a strided convolution's gradient and the
    layout changes around it cost several times the product (bench/gpu_kernel_profile.py).
    Returns ``(batch, rows * columns, hidden_size)``, patches in row-major order.
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(self.patch_size, self.patch_size, channels, self.hidden_size),
            initializer="glorot_uniform", name="kernel",
        )
        self.bias = self.add_weight(shape=(self.hidden_size,), initializer="zeros", name="bias")

    def call(self, images, training=None):
        kernel = ops.cast(self.kernel, images.dtype)
        bias = ops.cast(self.bias, images.dtype)
        if training:
            tokens = ops.conv(images, kernel, strides=self.patch_size, padding="valid")
            return ops.reshape(tokens, (ops.shape(images)[0], -1, self.hidden_size)) + bias
        patch = self.patch_size
        batch, height, width, channels = ops.shape(images)[0], images.shape[1], images.shape[2], images.shape[3]
        rows, cols = height // patch, width // patch
        patches = ops.reshape(images, (batch, rows, patch, cols, patch, channels))
        patches = ops.transpose(patches, (0, 1, 3, 2, 4, 5))
        patches = ops.reshape(patches, (batch, rows * cols, patch * patch * channels))
        return ops.matmul(patches, ops.reshape(kernel, (patch * patch * channels, self.hidden_size))) + bias



@keras.saving.register_keras_serializable(package="vitkit")
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token to a sequence of patch tokens."""

    def build(self, input_shape):
        self.cls = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="zeros", name="cls")

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        cls = ops.broadcast_to(ops.cast(self.cls, tokens.dtype), (batch, 1, tokens.shape[-1]))
        return ops.concatenate([cls, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], length, input_shape[2])


@keras.saving.register_keras_serializable(package="vitkit")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding to every token."""

    def build(self, input_shape):
        self.pos_embedding = self.add_weight(
            shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="pos_embedding",
        )

    def call(self, tokens):
        return tokens + ops.cast(self.pos_embedding, tokens.dtype)


@keras.saving.register_keras_serializable(package="vitkit")
class ConvStem(PatchTokenizer):
    """Convolutional stem (Xiao et al. 2021, "Early convolutions help transformers see better").

    3x3 convolutions with batch normalization and ReLU, stride 2 while the remaining patch
    factor is even (stride 1 for the first one otherwise, so every token sees its neighbours),
    then a ``projection`` convolution with kernel = stride = the remaining factor. Output:
    ``(batch, (H / patch) * (W / patch), hidden_size)`` tokens in row-major order, as
    :class:`PatchEmbedding` gives.

    Example:
        >>> ConvStem(patch_size=4, hidden_size=32)(keras.ops.zeros((1, 32, 32, 3))).shape
        (1, 64, 32)
    """

    def __init__(self, patch_size: int, hidden_size: int, **kwargs):
        super().__init__(patch_size, hidden_size, **kwargs)
        strides, remaining = [], patch_size
        while remaining % 2 == 0:
            strides.append(2)
            remaining //= 2
        self.strides = strides or [1]
        width = max(hidden_size // 2, 8)
        self.convs = [
            keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"conv_{i}")
            for i, stride in enumerate(self.strides)
        ]
        self.norms = [keras.layers.BatchNormalization(name=f"norm_{i}") for i in range(len(self.strides))]
        self.projection = keras.layers.Conv2D(hidden_size, remaining, strides=remaining, name="projection")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, norm, stride in zip(self.convs, self.norms, self.strides):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
        self.projection.build(shape)

    def call(self, images, training=None):
        x = images
        for conv, norm in zip(self.convs, self.norms):
            x = ops.relu(norm(conv(x), training=training))
        grid = self.projection(x)
        return ops.reshape(grid, (ops.shape(grid)[0], -1, self.hidden_size))


@keras.saving.register_keras_serializable(package="vitkit")
class ShiftedPatchTokenizer(PatchTokenizer):
    """Shifted patch tokenization (Lee et al. 2021, "Vision Transformer for Small-Size Datasets").

    The image and four copies shifted diagonally by half a patch (zero-filled) are stacked on
    the channel axis; each ``patch x patch`` patch of that stack is flattened, layer-normed
    (``norm``) and linearly projected (``projection``), so every token also sees the pixels
    around its patch. Output: ``(batch, (H / patch) * (W / patch), hidden_size)`` tokens in
    row-major order, as :class:`PatchEmbedding` gives.

    Example:
        >>> ShiftedPatchTokenizer(patch_size=4, hidden_size=32)(keras.ops.zeros((1, 32, 32, 3))).shape
        (1, 64, 32)
    """

    def __init__(self, patch_size: int, hidden_size: int, **kwargs):
        super().__init__(patch_size, hidden_size, **kwargs)
        self.shift = max(patch_size // 2, 1)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")
        self.projection = keras.layers.Dense(hidden_size, name="projection")

    def build(self, input_shape):
        patch_values = self.patch_size * self.patch_size * input_shape[-1] * 5
        self.norm.build((None, None, patch_values))
        self.projection.build((None, None, patch_values))

    def _shifted(self, images, rows: int, cols: int):
        """``images`` moved by ``rows`` down and ``cols`` right, zeros where nothing moved in."""
        s = self.shift
        padded = ops.pad(images, [(0, 0), (s, s), (s, s), (0, 0)])
        height, width = images.shape[1], images.shape[2]
        return padded[:, s - rows:s - rows + height, s - cols:s - cols + width, :]

    def call(self, images):
        s = self.shift
        stacked = ops.concatenate(
            [images] + [self._shifted(images, r, c) for r, c in ((-s, -s), (-s, s), (s, -s), (s, s))],
            axis=-1,
        )
        batch = ops.shape(images)[0]
        p, channels = self.patch_size, stacked.shape[-1]
        rows, cols = images.shape[1] // p, images.shape[2] // p
        patches = ops.reshape(stacked, (batch, rows, p, cols, p, channels))
        patches = ops.reshape(ops.transpose(patches, (0, 1, 3, 2, 4, 5)), (batch, rows * cols, p * p * channels))
        return self.projection(self.norm(patches))


def patch_tokenizer(tokenizer: str, patch_size: int, hidden_size: int) -> keras.layers.Layer:
    """The layer turning ``(batch, H, W, 3)`` images into ``(batch, (H/P) * (W/P), D)`` tokens, row-major."""
    if tokenizer == "conv":
        return ConvStem(patch_size, hidden_size, name="conv_stem")
    if tokenizer == "shifted":
        return ShiftedPatchTokenizer(patch_size, hidden_size, name="shifted_patches")
    return PatchEmbedding(patch_size, hidden_size, name="embedding")


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

    def call(self, x, training=None, return_attention: bool = False, attention_offset=None):
        query = self._split_heads(self.query(x))
        key = self._split_heads(self.key(x))
        value = self._split_heads(self.value(x))
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
            mixed = fused_attention(query, key, value, training=bool(training), mask=mask)
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
class EncoderBlock(keras.layers.Layer):
    """Pre-norm transformer block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``.

    ``drop_path`` is the probability of skipping the block's residual branches for a sample
    during training (stochastic depth); at inference the branches are always used.
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
        if drop_path > 0:
            self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        for layer in (self.norm_0, self.attention, self.norm_2, self.mlp):
            layer.build(input_shape)

    def _residual(self, branch, training):
        if not training or self.drop_path <= 0:
            return branch
        keep = 1.0 - self.drop_path
        shape = (ops.shape(branch)[0], 1, 1)
        mask = keras.random.uniform(shape, seed=self.seed_generator) < keep
        return branch * ops.cast(mask, branch.dtype) / keep

    def call(self, x, training=None, return_attention: bool = False, attention_offset=None):
        attended = self.attention(
            self.norm_0(x), training=training, return_attention=return_attention,
            attention_offset=attention_offset,
        )
        if return_attention:
            attended, weights = attended
        attended = self.attention_output_dropout(attended, training=training)
        x = x + self._residual(attended, training)
        x = x + self._residual(self.mlp(self.norm_2(x), training=training), training)
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
        }


@keras.saving.register_keras_serializable(package="vitkit")
class VisionTransformer(keras.layers.Layer):
    """ViT encoder: patch embedding, class token, position embedding, blocks, final norm.

    Takes images already scaled (``(batch, H, W, 3)`` floats) and returns the class token's
    features ``(batch, D)`` (after ``pre_logits`` when configured). With
    ``return_attention=True`` it also returns every block's attention weights stacked as
    ``(batch, layers, heads, tokens, tokens)``. ``attention_offset`` of that shape is added to
    each block's attention weights (see :class:`MultiHeadSelfAttention`).

    Example:
        >>> layer = VisionTransformer(patch_size=8, num_layers=2, hidden_size=32,
        ...                           num_heads=4, mlp_dim=64)
        >>> layer(keras.ops.zeros((1, 32, 32, 3))).shape
        (1, 32)
    """

    def __init__(
        self,
        patch_size: int,
        num_layers: int,
        hidden_size: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        representation_size: int | None = None,
        seed: int | None = None,
        tokenizer: str = "patch",
        locality_attention: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.config = ViTConfig(
            patch_size, num_layers, hidden_size, num_heads, mlp_dim,
            dropout, attention_dropout, drop_path, representation_size,
            tokenizer, locality_attention,
        )
        self.seed = seed
        self.embedding = patch_tokenizer(tokenizer, patch_size, hidden_size)
        self.class_token = ClassToken(name="class_token")
        self.position_embedding = PositionEmbedding(name="posembed_input")
        self.embedding_dropout = keras.layers.Dropout(dropout)
        self.blocks = [
            EncoderBlock(
                hidden_size, num_heads, mlp_dim, dropout, attention_dropout,
                drop_path=drop_path * i / max(num_layers - 1, 1),
                seed=None if seed is None else seed + i,
                locality_attention=locality_attention,
                name=f"encoderblock_{i}",
            )
            for i in range(num_layers)
        ]
        self.encoder_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="encoder_norm")
        self.pre_logits = (
            keras.layers.Dense(representation_size, activation="tanh", name="pre_logits")
            if representation_size
            else None
        )

    def grid_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid (rows, columns) for an image size."""
        patch = self.config.patch_size
        return image_size[0] // patch, image_size[1] // patch

    def build(self, input_shape):
        rows, cols = self.grid_shape(input_shape[1:3])
        self.embedding.build(input_shape)
        token_shape = (input_shape[0], rows * cols, self.config.hidden_size)
        self.class_token.build(token_shape)
        sequence_shape = (input_shape[0], rows * cols + 1, self.config.hidden_size)
        self.position_embedding.build(sequence_shape)
        for block in self.blocks:
            block.build(sequence_shape)
        self.encoder_norm.build(sequence_shape)
        if self.pre_logits is not None:
            self.pre_logits.build((input_shape[0], self.config.hidden_size))

    def call(self, images, training=None, return_attention: bool = False, attention_offset=None):
        tokens = self.position_embedding(self.class_token(self.embedding(images, training=training)))
        tokens = self.embedding_dropout(tokens, training=training)
        attention = []
        for i, block in enumerate(self.blocks):
            offset = None if attention_offset is None else attention_offset[:, i]
            if return_attention:
                tokens, weights = block(tokens, training=training, return_attention=True, attention_offset=offset)
                attention.append(weights)
            else:
                tokens = block(tokens, training=training, attention_offset=offset)
        features = self.encoder_norm(tokens)[:, 0]
        if self.pre_logits is not None:
            features = self.pre_logits(features)
        return (features, ops.stack(attention, axis=1)) if return_attention else features

    def get_config(self):
        return {**super().get_config(), **self.config.to_dict(), "seed": self.seed}
