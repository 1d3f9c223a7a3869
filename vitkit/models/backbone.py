"""The Vision Transformer backbone: the Keras layers that build it (configurations are in ``config``).

Variable paths follow the original Flax checkpoints (and vit-keras), so checkpoints map onto the
model by name::

    vit/embedding/kernel                                       (P, P, 3, D)
    vit/class_token/cls                                        (1, 1, D)
    vit/dist_token/tokens                                      (1, 1, D)   (distillation token)
    vit/registers/tokens                                       (1, R, D)   (register tokens)
    vit/posembed_input/pos_embedding                           (1, 1 [+ 1] + R + N, D), or (1, N, D)
    vit/encoderblock_{i}/LayerNorm_0/{gamma,beta}
    vit/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value,out}/{kernel,bias}
    vit/encoderblock_{i}/LayerScale_attention/gamma                        (LayerScale)
    vit/encoderblock_{i}/LayerNorm_2/{gamma,beta}
    vit/encoderblock_{i}/MlpBlock_3/{Dense_0,Dense_1}/{kernel,bias}
    vit/encoderblock_{i}/LayerScale_mlp/gamma                              (LayerScale)
    vit/encoder_norm/{gamma,beta}                              (fc_norm/{gamma,beta} with fc_norm)
    vit/pre_logits/{kernel,bias}                               (only with a representation layer)

The sequence is the class token, the distillation token (DeiT), the register tokens, then the
patch grid row by row. The options of later checkpoints (LayerScale, registers,
``no_embed_class``, mean pooling, ``fc_norm``, the distillation token; see
:class:`~vitkit.models.config.ViTConfig`) are off by default, and a backbone without them has
exactly the variables above without the marked ones.

Attention runs through ``keras.ops.dot_product_attention`` (fused kernels where the backend has
them) unless the caller asks for the attention weights, which takes the explicit softmax path in
the same forward pass. An ``attention_offset`` (zeros) added to those weights gives explanations
a tensor to differentiate the class scores against, on every backend.

Options for training from scratch on small data (off by default; a model that uses them has
other variables and takes no checkpoint): ``tokenizer="conv"`` puts :class:`ConvStem` (variables
under ``vit/conv_stem``) and ``tokenizer="shifted"`` puts :class:`ShiftedPatchTokenizer` (under
``vit/shifted_patches``) in place of ``embedding``; ``locality_attention=True`` adds a
``temperature`` to every attention layer. The token layout is the same for all of them.
"""

from __future__ import annotations

import keras
from keras import ops

from vitkit.models.attention import MultiHeadSelfAttention, _cudnn_attention, fused_attention
from vitkit.models.blocks import EncoderBlock, LayerScale, MlpBlock, _erf, _gelu_exact, gelu_tanh
from vitkit.errors import ConfigError
from vitkit.models.config import ViTConfig
from vitkit.models.tokens import (
    ClassToken, ConvStem, DistillationToken, PatchEmbedding, PatchTokenizer, PositionEmbedding, RegisterTokens,
    ShiftedPatchTokenizer, patch_tokenizer,
)

# The layers live in attention, tokens and blocks; their names stay importable from here.
__all__ = [
    "ClassToken", "ConvStem", "DistillationToken", "EncoderBlock", "LayerScale", "MlpBlock", "MultiHeadSelfAttention",
    "PatchEmbedding", "PatchTokenizer", "PositionEmbedding", "RegisterTokens", "ShiftedPatchTokenizer",
    "VisionTransformer", "_cudnn_attention", "_erf", "_gelu_exact", "fused_attention", "gelu_tanh",
    "patch_tokenizer",
]


@keras.saving.register_keras_serializable(package="vitkit")
class VisionTransformer(keras.layers.Layer):
    """ViT encoder: patch embedding, class (and register) tokens, position embedding, blocks,
    final norm, pooling.

    Takes images already scaled (``(batch, H, W, 3)`` floats) and returns the pooled features
    ``(batch, D)``: the class token's, or the mean of the patch tokens with ``pooling="mean"``
    (after ``fc_norm`` and ``pre_logits`` when configured). With ``return_attention=True`` it
    also returns every block's attention weights stacked as ``(batch, layers, heads, tokens,
    tokens)``; with ``distillation=True`` (a backbone with the distillation token) the pooled
    features are followed by the distillation token's (see :meth:`pool_distillation`). ``attention_offset`` of that shape is added to each block's attention weights
    (see :class:`MultiHeadSelfAttention`). :meth:`encode` and :meth:`pool` are the two halves.

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
        layer_scale: float | None = None,
        register_tokens: int = 0,
        no_embed_class: bool = False,
        pooling: str = "token",
        fc_norm: bool = False,
        distillation_token: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.config = ViTConfig(
            patch_size, num_layers, hidden_size, num_heads, mlp_dim,
            dropout, attention_dropout, drop_path, representation_size,
            tokenizer, locality_attention, layer_scale, register_tokens, no_embed_class, pooling, fc_norm,
            distillation_token,
        )
        self.seed = seed
        self.embedding = patch_tokenizer(tokenizer, patch_size, hidden_size)
        self.class_token = ClassToken(name="class_token")
        if distillation_token:
            self.dist_token = DistillationToken(name="dist_token")
        if register_tokens:
            self.registers = RegisterTokens(register_tokens, name="registers")
        self.position_embedding = PositionEmbedding(name="posembed_input")
        self.embedding_dropout = keras.layers.Dropout(dropout)
        self.blocks = [
            EncoderBlock(
                hidden_size, num_heads, mlp_dim, dropout, attention_dropout,
                drop_path=drop_path * i / max(num_layers - 1, 1),
                seed=None if seed is None else seed + i,
                locality_attention=locality_attention,
                layer_scale=layer_scale,
                name=f"encoderblock_{i}",
            )
            for i in range(num_layers)
        ]
        if fc_norm:
            self.fc_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="fc_norm")
        else:
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

    def token_count(self, image_size: tuple[int, int]) -> int:
        """Tokens in the sequence for an image size: class token, distillation token, registers, patches."""
        rows, cols = self.grid_shape(image_size)
        return self.config.prefix_tokens + rows * cols

    def build(self, input_shape):
        config = self.config
        rows, cols = self.grid_shape(input_shape[1:3])
        self.built_grid = (rows, cols)
        self.embedding.build(input_shape)
        patches_shape = (input_shape[0], rows * cols, config.hidden_size)
        sequence_shape = (input_shape[0], rows * cols + config.prefix_tokens, config.hidden_size)
        self.class_token.build(patches_shape)
        if config.distillation_token:
            self.dist_token.build(patches_shape)
        if config.register_tokens:
            self.registers.build(patches_shape)
        self.position_embedding.build(patches_shape if config.no_embed_class else sequence_shape)
        for block in self.blocks:
            block.build(sequence_shape)
        if config.fc_norm:
            self.fc_norm.build((input_shape[0], config.hidden_size))
        else:
            self.encoder_norm.build(sequence_shape)
        if self.pre_logits is not None:
            self.pre_logits.build((input_shape[0], config.hidden_size))

    def _sequence(self, images, training=None):
        """Patch tokens with the class, distillation and register tokens in front and positions
        added; images of another size than the backbone was built for get the position embedding
        resampled to their grid (DINO's smaller crops)."""
        tokens = self.embedding(images, training=training)
        grid = self.grid_shape(images.shape[1:3])
        if self.config.no_embed_class:
            tokens = self.position_embedding(tokens, grid=grid, built_grid=self.built_grid)
        if self.config.register_tokens:
            tokens = self.registers(tokens)
        if self.config.distillation_token:
            tokens = self.dist_token(tokens)
        tokens = self.class_token(tokens)
        if not self.config.no_embed_class:
            tokens = self.position_embedding(tokens, grid=grid, built_grid=self.built_grid,
                                             prefix_tokens=self.config.prefix_tokens)
        return self.embedding_dropout(tokens, training=training)

    def _pads_once(self, length: int | None, training, explicit: bool) -> bool:
        """Whether the blocks carry one padding token at the end of the sequence.

        On JAX, cuDNN's attention computes gradients only for sequences of even length; padding
        the sequence once here costs less than padding each block's query, key and value
        (bench/gpu_profile.py ``blockpad``). The padding token is ignored as a key, so the other
        tokens and every gradient are as without it; it is dropped after the blocks.
        """
        return bool(training and not explicit and keras.backend.backend() == "jax" and length is not None
                    and length % 2 and not self.config.locality_attention and not self.config.attention_dropout)

    def _encode(self, images, training=None, return_attention: bool = False, attention_offset=None):
        tokens = self._sequence(images, training=training)
        length = tokens.shape[1]
        padded = self._pads_once(length, training, return_attention or attention_offset is not None)
        if padded:
            tokens = ops.pad(tokens, [(0, 0), (0, 1), (0, 0)])
        attention = []
        for i, block in enumerate(self.blocks):
            offset = None if attention_offset is None else attention_offset[:, i]
            if return_attention:
                tokens, weights = block(tokens, training=training, return_attention=True, attention_offset=offset)
                attention.append(weights)
            else:
                tokens = block(tokens, training=training, attention_offset=offset,
                               valid_length=length if padded else None)
        if padded:
            tokens = tokens[:, :length]
        if not self.config.fc_norm:
            tokens = self.encoder_norm(tokens)
        return tokens, attention

    def encode(self, images, training=None):
        """Every token after the last block and the final norm, ``(batch, tokens, D)``: class
        token, distillation token, registers, then patches (timm's ``forward_features``; without the norm when
        the model has ``fc_norm``)."""
        return self._encode(images, training=training)[0]

    def pool(self, tokens):
        """Pooled features ``(batch, D)`` of :meth:`encode`'s tokens: the class token, or the mean
        of the patch tokens; then ``fc_norm`` and ``pre_logits`` where the model has them."""
        if self.config.pooling == "mean":
            features = ops.mean(tokens[:, self.config.prefix_tokens:], axis=1)
        else:
            features = tokens[:, 0]
        return self._finish(features)

    def pool_distillation(self, tokens):
        """The distillation token's features ``(batch, D)`` of :meth:`encode`'s tokens, through
        the same ``fc_norm`` and ``pre_logits`` as the pooled features."""
        return self._finish(tokens[:, 1])

    def _finish(self, features):
        if self.config.fc_norm:
            features = self.fc_norm(features)
        if self.pre_logits is not None:
            features = self.pre_logits(features)
        return features

    def call(self, images, training=None, return_attention: bool = False, attention_offset=None,
             distillation: bool = False):
        if distillation and not self.config.distillation_token:
            raise ConfigError("distillation=True needs a backbone with the distillation token")
        tokens, attention = self._encode(images, training, return_attention, attention_offset)
        outputs = [self.pool(tokens)]
        if distillation:
            outputs.append(self.pool_distillation(tokens))
        if return_attention:
            outputs.append(ops.stack(attention, axis=1))
        return tuple(outputs) if len(outputs) > 1 else outputs[0]

    def get_config(self):
        return {**super().get_config(), **self.config.to_dict(), "seed": self.seed}
