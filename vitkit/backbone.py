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
"""

from __future__ import annotations

import math

import keras
from keras import ops

from vitkit.config import ViTConfig


def gelu_tanh(x):
    """GELU in its tanh approximation, the form of tensorflow-addons' default ``gelu``."""
    return keras.activations.gelu(x, approximate=True)


keras.saving.register_keras_serializable(package="vitkit", name="gelu_tanh")(gelu_tanh)


def _gelu_exact(x):
    return keras.activations.gelu(x, approximate=False)


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
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention with ``query``/``key``/``value``/``out`` projections (D x D).

    ``call(x, return_attention=True)`` also returns the attention weights
    ``(batch, heads, tokens, tokens)``; otherwise the fused attention op is used.
    ``attention_offset`` (same shape) is added to the weights after the softmax; with zeros the
    output is unchanged and its gradient is the gradient with respect to the weights.
    """

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.query = keras.layers.Dense(hidden_size, name="query")
        self.key = keras.layers.Dense(hidden_size, name="key")
        self.value = keras.layers.Dense(hidden_size, name="value")
        self.out = keras.layers.Dense(hidden_size, name="out")
        self.weights_dropout = keras.layers.Dropout(attention_dropout)

    def build(self, input_shape):
        for dense in (self.query, self.key, self.value, self.out):
            dense.build(input_shape)

    def _split_heads(self, x):
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        return ops.reshape(x, (batch, length, self.num_heads, x.shape[-1] // self.num_heads))

    def call(self, x, training=None, return_attention: bool = False, attention_offset=None):
        query = self._split_heads(self.query(x))
        key = self._split_heads(self.key(x))
        value = self._split_heads(self.value(x))
        head_dim = query.shape[-1]
        explicit = return_attention or attention_offset is not None
        if explicit or (training and self.attention_dropout > 0):
            scores = ops.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)
            weights = ops.softmax(ops.cast(scores, "float32"), axis=-1)
            if attention_offset is not None:
                weights = weights + ops.cast(attention_offset, weights.dtype)
            mixed = ops.einsum(
                "bhqk,bkhd->bqhd",
                ops.cast(self.weights_dropout(weights, training=training), value.dtype),
                value,
            )
        else:
            weights = None
            mixed = ops.dot_product_attention(query, key, value)
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        output = self.out(ops.reshape(mixed, (batch, length, x.shape[-1])))
        return (output, weights) if return_attention else output

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "attention_dropout": self.attention_dropout,
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
        self.norm_0 = keras.layers.LayerNormalization(epsilon=1e-6, name="LayerNorm_0")
        self.attention = MultiHeadSelfAttention(
            hidden_size, num_heads, attention_dropout, name="MultiHeadDotProductAttention_1"
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.config = ViTConfig(
            patch_size, num_layers, hidden_size, num_heads, mlp_dim,
            dropout, attention_dropout, drop_path, representation_size,
        )
        self.seed = seed
        self.embedding = keras.layers.Conv2D(
            hidden_size, patch_size, strides=patch_size, padding="valid", name="embedding"
        )
        self.class_token = ClassToken(name="class_token")
        self.position_embedding = PositionEmbedding(name="posembed_input")
        self.embedding_dropout = keras.layers.Dropout(dropout)
        self.blocks = [
            EncoderBlock(
                hidden_size, num_heads, mlp_dim, dropout, attention_dropout,
                drop_path=drop_path * i / max(num_layers - 1, 1),
                seed=None if seed is None else seed + i,
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
        patches = self.embedding(images)
        batch = ops.shape(patches)[0]
        tokens = ops.reshape(patches, (batch, -1, self.config.hidden_size))
        tokens = self.position_embedding(self.class_token(tokens))
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
