"""Mixup and CutMix: training batches that blend two images and their labels.

They live in the batch stream, not in the model. Both change the *targets* as well as the
pixels, and a Keras layer only sees the images: doing it inside the model would mean a custom
``train_step`` for every backend. On the uint8 batches, in NumPy, one wrapper serves every
backend, needs no TensorFlow under JAX, and (drawing from ``(seed, epoch, batch)``) gives a
resumed run exactly the batches of an uninterrupted one. Mixed pixels are rounded back to
uint8, a change of at most half a grey level. The model's own augmentation then runs on the
mixed image, one random transform for the blend.

References: Zhang et al. 2018, "mixup: Beyond empirical risk minimization"; Yun et al. 2019,
"CutMix: Regularization strategy to train strong classifiers with localizable features".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from vitkit.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """Batch mixing options; both 0 turns mixing off.

    Args:
        mixup: alpha of the Beta(alpha, alpha) mixup weight, 0 for no mixup.
        cutmix: alpha of the Beta(alpha, alpha) CutMix weight, 0 for no CutMix.
        probability: share of batches that are mixed at all.

    When both are on, each mixed batch uses one of them, chosen with equal odds (as DeiT does).
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    probability: float = 1.0

    def __post_init__(self):
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError(f"mixup and cutmix alphas must be >= 0, got {self.mixup} and {self.cutmix}")
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"mixing probability must be in [0, 1], got {self.probability}")

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.probability > 0


def mixup(images: np.ndarray, targets: np.ndarray, partner: np.ndarray, weight: float):
    """Blend every image with ``images[partner]``: ``weight * a + (1 - weight) * b`` (pixels and targets)."""
    blended = weight * images.astype(np.float32) + (1.0 - weight) * images[partner].astype(np.float32)
    return _like(blended, images), weight * targets + (1.0 - weight) * targets[partner], weight


def cutmix(images: np.ndarray, targets: np.ndarray, partner: np.ndarray, weight: float,
           rng: np.random.Generator):
    """Paste a box of ``images[partner]`` covering about ``1 - weight`` of the area into every image.

    The box centre is uniform over the image and the box is clipped at the borders; the targets
    use the share of the area actually kept, which is also returned.
    """
    height, width = images.shape[1:3]
    ratio = np.sqrt(1.0 - weight)
    box_h, box_w = int(round(height * ratio)), int(round(width * ratio))
    centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([centre_y - box_h // 2, centre_y - box_h // 2 + box_h], 0, height)
    left, right = np.clip([centre_x - box_w // 2, centre_x - box_w // 2 + box_w], 0, width)
    mixed = images.copy()
    mixed[:, top:bottom, left:right] = images[partner, top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, kept * targets + (1.0 - kept) * targets[partner], kept


def mix_batch(images: np.ndarray, targets: np.ndarray, sample_weights: np.ndarray | None,
              config: MixConfig, rng: np.random.Generator):
    """Mixup or CutMix one batch as ``config`` says; returns ``(images, targets, sample_weights)``.

    Each image is paired with another of the same batch (a random permutation); sample weights
    are mixed with the same share as the targets.
    """
    if not config.enabled or len(images) < 2 or rng.random() >= config.probability:
        return images, targets, sample_weights
    use_cutmix = config.cutmix > 0 and (config.mixup <= 0 or rng.random() < 0.5)
    alpha = config.cutmix if use_cutmix else config.mixup
    weight = float(rng.beta(alpha, alpha))
    partner = rng.permutation(len(images))
    if use_cutmix:
        images, targets, kept = cutmix(images, targets, partner, weight, rng)
    else:
        images, targets, kept = mixup(images, targets, partner, weight)
    if sample_weights is not None:
        sample_weights = kept * sample_weights + (1.0 - kept) * sample_weights[partner]
    return images, targets.astype(np.float32), sample_weights


class MixedBatches(keras.utils.PyDataset):
    """Training batches of an :class:`~vitkit.data.batches.ImageBatches` with Mixup / CutMix applied.

    Batch ``i`` of epoch ``e`` is mixed with a generator seeded by ``(seed, e, i)``, so the
    result does not depend on worker threads or on where a run was resumed.

    Example:
        >>> batches = MixedBatches(ImageBatches(images, 32, classes, shuffle=True), MixConfig(0.8, 1.0))
        >>> model.fit(batches, epochs=10)
    """

    def __init__(self, batches: Any, config: MixConfig, seed: int = 0):
        super().__init__(workers=batches.workers, use_multiprocessing=False, max_queue_size=8)
        if batches.targets is None:
            raise ConfigError("mixing needs labelled batches")
        self.batches = batches
        self.config = config
        self.seed = seed

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        batch = self.batches[index]
        images, targets = batch[0], batch[1]
        weights = batch[2] if len(batch) == 3 else None
        rng = np.random.default_rng([self.seed, self.batches.epoch, index, 0x6D6978])
        images, targets, weights = mix_batch(images, targets, weights, self.config, rng)
        return (images, targets) if weights is None else (images, targets, weights)

    def set_epoch(self, epoch: int) -> None:
        """Jump to the order (and mixing draws) of ``epoch``."""
        self.batches.set_epoch(epoch)

    def on_epoch_end(self) -> None:
        self.batches.on_epoch_end()


def _like(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    if reference.dtype == np.uint8:
        return np.clip(np.round(values), 0, 255).astype(np.uint8)
    return values.astype(reference.dtype)
