"""Masked image modelling (SimMIM, Xie et al. 2022): a backbone learns from unlabelled photos by
predicting the pixels of the patches hidden from it.

uint8 images -> augmentation -> scaling (as the classifier does) -> a random share of the patch
grid set to zero in pixel space -> backbone -> the final patch tokens -> one ``Dense`` layer to
``patch * patch * 3`` pixels per token -> L1 (or squared) error over the hidden patches only.

Masking pixels rather than tokens keeps every tokenizer blind to the hidden patches (a
convolutional stem sees zeros, not the image), so the small-data backbone (convolutional stem,
locality attention) is pre-trained exactly as it is later fine-tuned. The target is, as in MAE
(He et al. 2022), each patch normalized by its own mean and standard deviation unless
``normalize_target=False``.
"""

from __future__ import annotations

import keras
from keras import ops

from vitkit.data.preprocessing import Augment, ScaleImages
from vitkit.data.inputconfig import AugmentConfig
from vitkit.errors import ConfigError
from vitkit.models.backbone import VisionTransformer
from vitkit.models.config import ViTConfig

LOSSES = ("l1", "mse")
# Seeds of the mask draws, away from those of augmentation (seed) and dropout (seed + block).
_MASK_SEED_OFFSET = 10_007


def patchify(images, patch_size: int):
    """``(batch, H, W, C)`` -> ``(batch, (H / P) * (W / P), P * P * C)``: patches in row-major
    order (the backbone's token order), each flattened row by row, channels last."""
    batch, height, width, channels = ops.shape(images)[0], images.shape[1], images.shape[2], images.shape[3]
    rows, cols = height // patch_size, width // patch_size
    patches = ops.reshape(images, (batch, rows, patch_size, cols, patch_size, channels))
    patches = ops.transpose(patches, (0, 1, 3, 2, 4, 5))
    return ops.reshape(patches, (batch, rows * cols, patch_size * patch_size * channels))


def check_masking(ratio: float, mask_patch_size: int, patch_size: int, image_size: tuple[int, int]) -> None:
    """Refuse a mask ratio outside (0, 1), or hidden squares that are not whole patches tiling the image.

    Raises:
        ConfigError: naming the option and what would fit.
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"mask ratio must be between 0 and 1 (exclusive), got {ratio}")
    height, width = image_size
    if mask_patch_size < 1 or mask_patch_size % patch_size or height % mask_patch_size or width % mask_patch_size:
        raise ConfigError(f"mask patch size {mask_patch_size} must be a multiple of the patch size {patch_size} "
                          f"that divides the image size {height}x{width}")
    if (height // mask_patch_size) * (width // mask_patch_size) < 2:
        raise ConfigError(f"mask patch size {mask_patch_size} leaves one square on a {height}x{width} image; "
                          f"use a smaller one")


def masked_cells(ratio: float, cells: int) -> int:
    """How many of ``cells`` grid cells a mask of ``ratio`` hides: the nearest whole number, at
    least one and never all."""
    return min(max(int(round(ratio * cells)), 1), cells - 1)


@keras.saving.register_keras_serializable(package="vitkit")
class PatchMask(keras.layers.Layer):
    """Draws which cells of a ``grid`` are hidden, per image: exactly :func:`masked_cells` of them,
    uniformly among all such choices, from Keras' seeded random stream (reproducible, and resumed
    with the run). Returns ``(batch, rows, cols)`` floats, 1 where hidden."""

    def __init__(self, ratio: float, grid: tuple[int, int], seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.ratio = ratio
        self.grid = tuple(grid)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images):
        cells = self.grid[0] * self.grid[1]
        noise = keras.random.uniform((ops.shape(images)[0], cells), seed=self.seed_generator)
        ranks = ops.argsort(ops.argsort(noise, axis=-1), axis=-1)
        hidden = ops.cast(ops.less(ranks, masked_cells(self.ratio, cells)), "float32")
        return ops.reshape(hidden, (-1, *self.grid))

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio, "grid": list(self.grid), "seed": self.seed}


def expand_mask(mask, factor: int):
    """``(batch, rows, cols)`` -> ``(batch, rows * factor, cols * factor)``: each cell as a square."""
    return ops.repeat(ops.repeat(mask, factor, axis=1), factor, axis=2)


@keras.saving.register_keras_serializable(package="vitkit")
class MaskedReconstructionLoss(keras.losses.Loss):
    """Mean error over the hidden patches: per image, the mean over its hidden patches of the
    mean absolute (``l1``) or squared (``mse``) error of their pixels, then the mean over images.

    Called as ``loss(mask (batch, tokens), (prediction, target))``, both ``(batch, tokens, pixels)``.
    """

    def __init__(self, kind: str = "l1", normalize_target: bool = True, name: str = "masked_reconstruction", **kwargs):
        super().__init__(name=name, **kwargs)
        if kind not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")
        self.kind = kind
        self.normalize_target = normalize_target

    def call(self, mask, outputs):
        prediction, target = outputs
        if self.normalize_target:
            mean = ops.mean(target, axis=-1, keepdims=True)
            variance = ops.var(target, axis=-1, keepdims=True)
            target = (target - mean) / ops.sqrt(variance + 1e-6)
        difference = prediction - target
        error = ops.abs(difference) if self.kind == "l1" else ops.square(difference)
        per_patch = ops.mean(error, axis=-1)
        return ops.sum(per_patch * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "normalize_target": self.normalize_target}


class MaskedImageModel(keras.Model):
    """A backbone with a linear pixel decoder, trained by ``fit`` on uint8 images alone.

    ``call`` returns ``{"prediction", "target", "mask"}`` (``(batch, tokens, P*P*3)`` twice and
    ``(batch, tokens)``); its loss is :class:`MaskedReconstructionLoss` of them. The backbone
    layer (``backbone``) is the one a classifier fine-tunes.

    Args:
        backbone: the backbone's configuration (complete: patch size set).
        image_size: (height, width) of the images.
        mask_ratio: share of the mask grid hidden per image.
        mask_patch_size: side of the hidden squares in pixels: the patch size or a multiple of it.
        loss: ``l1`` or ``mse``.
        normalize_target: predict each patch normalized by its own mean and std.
        augment: augmentation before scaling.
        preprocess: pixel scaling, as :class:`~vitkit.data.preprocessing.ScaleImages`.
        seed: seed of augmentation, masks, dropout and stochastic depth.
    """

    def __init__(self, backbone: ViTConfig, image_size: tuple[int, int], mask_ratio: float = 0.6,
                 mask_patch_size: int | None = None, loss: str = "l1", normalize_target: bool = True,
                 augment: AugmentConfig = AugmentConfig.off(), preprocess: str = "tf", seed: int | None = None,
                 **kwargs):
        kwargs.setdefault("name", "vitkit_masked_image_model")
        super().__init__(**kwargs)
        patch = backbone.patch_size
        mask_patch = mask_patch_size or patch
        height, width = image_size
        check_masking(mask_ratio, mask_patch, patch, (height, width))
        self.image_size = (height, width)
        self.patch_size = patch
        self.mask_patch_size = mask_patch
        self.augment = Augment(augment, seed=seed, name="augment", dtype="float32")
        self.scale = ScaleImages(preprocess, name="scale", dtype="float32")
        self.masker = PatchMask(mask_ratio, (height // mask_patch, width // mask_patch),
                                seed=None if seed is None else seed + _MASK_SEED_OFFSET, name="mask")
        self.backbone = VisionTransformer(**backbone.to_dict(), seed=seed, name="vit")
        self.decoder = keras.layers.Dense(patch * patch * 3, dtype="float32", name="decoder")
        self.reconstruction_loss = MaskedReconstructionLoss(loss, normalize_target)
        self.backbone.build((None, height, width, 3))
        self.decoder.build((None, None, backbone.hidden_size))
        self.built = True

    def masked_inputs(self, images, training=None):
        """``(scaled images, the same with hidden pixels zero, mask (batch, rows, cols))`` for uint8 images."""
        scaled = self.scale(self.augment(ops.cast(images, "float32"), training=training))
        mask = self.masker(images)
        pixels = expand_mask(mask, self.mask_patch_size)[..., None]
        return scaled, scaled * (1.0 - pixels), mask

    def reconstruct(self, scaled, masked, mask, training=None) -> dict:
        """The decoder's pixels for every patch token of ``masked``, the ``scaled`` patches they
        aim at, and the mask on the token grid."""
        tokens = self.backbone.encode(masked, training=training)[:, self.backbone.config.prefix_tokens:]
        token_mask = expand_mask(mask, self.mask_patch_size // self.patch_size)
        return {"prediction": self.decoder(tokens), "target": patchify(scaled, self.patch_size),
                "mask": ops.reshape(token_mask, (ops.shape(token_mask)[0], -1))}

    def call(self, images, training=None):
        return self.reconstruct(*self.masked_inputs(images, training=training), training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.reconstruction_loss(y_pred["mask"], (y_pred["prediction"], y_pred["target"]))
