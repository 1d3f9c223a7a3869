"""The data of a training run: the caller's training and validation data read into image sets
with their classes, and the batch streams that ``fit`` reads from them."""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import keras
import numpy as np

from vitkit.data.batches import ImageBatches
from vitkit.data.imageset import ImageSet, load_images
from vitkit.data.manifest import Manifest, read_manifest
from vitkit.data.manifestbuild import stratified_split
from vitkit.data.mixing import MixConfig, MixedBatches
from vitkit.data.pixelcsv import is_pixel_csv
from vitkit.errors import ConfigError, ManifestError
from vitkit.training.parallel import Parallel
from vitkit.training.settings import RunSettings


@dataclasses.dataclass(frozen=True)
class DataSource:
    """How images are found and read (see :func:`~vitkit.data.imageset.load_images`); not recorded
    with the run, since they do not change what it learns from."""

    label_from: str = "auto"
    root: str | Path | None = None
    cache_dir: str | Path | None = None
    on_bad_image: str = "skip"


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The images a run learns from and is validated on, and its classes in output order."""

    train: ImageSet
    val: ImageSet | None
    class_names: tuple[str, ...]


def load_training_data(train_data: Any, val_data: Any, settings: RunSettings,
                       source: DataSource = DataSource()) -> TrainingData:
    """Read the training and validation data (in any form :func:`vitkit.train` takes).

    Without ``val_data``, a manifest's ``val`` split, else ``settings.val_fraction`` of the
    training images (stratified, seeded), is the validation set. The classes are
    ``settings.classes``, else the sorted classes of the training images.

    Raises:
        ManifestError: images without a class, fewer than two classes, or a class without
            training images.
    """
    def load(data):
        return load_images(data, settings.image_size, settings.resize_mode, interpolation=settings.interpolation,
                           label_from=source.label_from, classes=settings.classes, root=source.root,
                           cache_dir=source.cache_dir, on_bad_image=source.on_bad_image)

    if val_data is None and isinstance(train_data, (str, Path)) and str(train_data).lower().endswith(".csv"):
        manifest = _manifest_if_split(Path(train_data), source, settings.classes)
        if manifest is not None:
            train_data, val_data = manifest.split("train"), manifest.split("val")
            if not len(val_data):
                val_data = None
    train_set = load(train_data)
    if train_set.labels is None:
        raise ManifestError(
            "training images need a class each: give a manifest whose rows all have a label (or "
            "type_dir), a pixel CSV or (x, y)"
        )
    val_set = load(val_data) if val_data is not None else None
    if val_data is None and settings.val_fraction > 0:
        train_set, val_set = _hold_out(train_set, settings.val_fraction, settings.seed)
    class_names = settings.classes or tuple(sorted(set(train_set.labels)))
    _check_classes(train_set, val_set, list(class_names))
    return TrainingData(train_set, val_set, tuple(class_names))


def batch_streams(data: TrainingData, settings: RunSettings,
                  parallel: Parallel) -> tuple[keras.utils.PyDataset, keras.utils.PyDataset | None]:
    """The training and validation batches this process reads (its shard of each global batch)."""
    class_names = list(data.class_names)
    batches = ImageBatches(data.train, parallel.local_batch_size(settings.batch_size), class_names,
                           shuffle=True, seed=settings.seed,
                           sample_weights=sample_weights(data.train, class_names, settings.class_weights),
                           drop_remainder=True, shard=parallel.shard, multiple_of=parallel.multiple_of)
    mix = MixConfig(settings.mixup, settings.cutmix)
    if mix.enabled:
        batches = MixedBatches(batches, mix, settings.seed)
    if data.val is None:
        return batches, None
    left_out = len(data.val) % parallel.multiple_of
    if left_out and parallel.is_chief:
        warnings.warn(f"validation leaves out {left_out} of {len(data.val)} images so that each of the "
                      f"{parallel.replicas} devices gets an equal share", stacklevel=3)
    return batches, ImageBatches(data.val, parallel.local_batch_size(settings.batch_size), class_names,
                                 shard=parallel.shard, multiple_of=parallel.multiple_of)


def sample_weights(train_set: ImageSet, class_names: list[str],
                   class_weights: str | Mapping[str, float] | None) -> np.ndarray | None:
    """Per-image loss weights from ``class_weights`` (``balanced`` or class -> weight), or None.

    Raises:
        ConfigError: the weights name a class the run does not have.
    """
    if class_weights is None:
        return None
    indices = train_set.label_indices(class_names)
    if class_weights == "balanced":
        counts = np.bincount(indices, minlength=len(class_names))
        per_class = len(indices) / (len(class_names) * np.maximum(counts, 1))
    else:
        unknown = sorted(set(class_weights) - set(class_names))
        if unknown:
            raise ConfigError(f"class weights name unknown class(es) {unknown}")
        per_class = np.array([float(class_weights.get(name, 1.0)) for name in class_names])
    return per_class[indices].astype(np.float32)


def _hold_out(train_set: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """Split a stratified, seeded share off the training images for validation."""
    splits = stratified_split(train_set.labels, val_fraction, 0.0, seed)
    val_rows = [i for i, s in enumerate(splits) if s == "val"]
    if not val_rows:
        return train_set, None
    return train_set.subset([i for i, s in enumerate(splits) if s == "train"]), train_set.subset(val_rows)


def _manifest_if_split(path: Path, source: DataSource, classes) -> Manifest | None:
    if is_pixel_csv(path):
        return None
    manifest = read_manifest(path, source.label_from, classes, source.root)
    return manifest if manifest.has_splits else None


def _check_classes(train_set: ImageSet, val_set: ImageSet | None, class_names: list[str]) -> None:
    if len(class_names) < 2:
        raise ManifestError(f"training data has only the class(es) {class_names}; a classifier needs at least two")
    counts = Counter(train_set.labels)
    missing = [name for name in class_names if counts[name] == 0]
    if missing:
        raise ManifestError(f"no training images for class(es) {missing}; add images or drop them from --classes")
    train_set.label_indices(class_names)
    if val_set is not None:
        val_set.label_indices(class_names)
