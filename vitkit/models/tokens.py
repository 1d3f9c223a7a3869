"""Images to tokens: patch tokenizers (linear patches, convolutional stem, shifted patches), the
class token, the distillation token, register tokens and the learned position embedding."""

from __future__ import annotations

import keras
from keras import ops


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
class RegisterTokens(keras.layers.Layer):
    """Prepends ``count`` learned register tokens (Darcet et al. 2023) to a token sequence."""

    def __init__(self, count: int, **kwargs):
        super().__init__(**kwargs)
        self.count = count

    def build(self, input_shape):
        # Random, not zero: identical registers would stay identical through training.
        self.tokens = self.add_weight(
            shape=(1, self.count, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=0.02), name="tokens",
        )

    def call(self, tokens):
        batch = ops.shape(tokens)[0]
        registers = ops.broadcast_to(ops.cast(self.tokens, tokens.dtype), (batch, self.count, tokens.shape[-1]))
        return ops.concatenate([registers, tokens], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + self.count
        return (input_shape[0], length, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "count": self.count}


@keras.saving.register_keras_serializable(package="vitkit")
class DistillationToken(RegisterTokens):
    """Prepends the learned distillation token (DeiT, Touvron et al. 2021) to a token sequence:
    one token, drawn at random like the registers, whose output a second head reads."""

    def __init__(self, **kwargs):
        kwargs.pop("count", None)  # always one; get_config writes it
        super().__init__(1, **kwargs)


@keras.saving.register_keras_serializable(package="vitkit")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding to every token.

    ``call(tokens, grid=..., built_grid=..., prefix_tokens=...)`` with a patch ``grid`` other
    than the ``built_grid`` the embedding was made for resamples its patch part bilinearly to
    that grid (half-pixel centres, as DINO interpolates it for its smaller crops) and keeps the
    ``prefix_tokens`` in front as they are.
    """

    def build(self, input_shape):
        self.pos_embedding = self.add_weight(
            shape=(1, input_shape[1], input_shape[2]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="pos_embedding",
        )

    def call(self, tokens, grid=None, built_grid=None, prefix_tokens: int = 0):
        embedding = ops.cast(self.pos_embedding, tokens.dtype)
        if grid is not None and tuple(grid) != tuple(built_grid):
            embedding = _resampled(embedding, tuple(built_grid), tuple(grid), prefix_tokens)
        return tokens + embedding


def _resampled(embedding, built_grid: tuple[int, int], grid: tuple[int, int], prefix_tokens: int):
    """``(1, prefix + rows * cols, D)`` on ``built_grid`` -> the same on ``grid``."""
    depth = embedding.shape[-1]
    patches = ops.reshape(embedding[:, prefix_tokens:], (1, *built_grid, depth))
    patches = ops.image.resize(patches, grid, interpolation="bilinear", antialias=False,
                               data_format="channels_last")
    return ops.concatenate([embedding[:, :prefix_tokens], ops.reshape(patches, (1, grid[0] * grid[1], depth))], axis=1)


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
