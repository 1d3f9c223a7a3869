"""The images a pre-training run learns from: the photos or manifest given and any folders of
extra, unlabelled photos, read through the same loading and cache as training; classes are not
needed and not used."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitkit.data.imageset import ImageSet, load_images
from vitkit.data.manifest import SPLITS, Manifest, read_manifest
from vitkit.data.pixelcsv import is_pixel_csv
from vitkit.data.textarray import TextArray
from vitkit.errors import ConfigError
from vitkit.training.datasets import DataSource
from vitkit.training.pretrainsettings import PretrainSettings


def load_pretraining_images(data: Any, unlabeled: Sequence[Any], settings: PretrainSettings,
                            source: DataSource = DataSource()) -> ImageSet:
    """Read ``data`` and every item of ``unlabeled`` into one image set.

    Each is a photo folder (searched recursively), a manifest CSV (without its ``test`` rows when
    it has a split column, so that pre-training never sees the images a model is tested on), a
    pixel CSV, image files or a uint8 array; labels are ignored where present.

    Raises:
        ConfigError: no images were given.
    """
    items = [item for item in (data, *unlabeled) if item is not None]
    if not items:
        raise ConfigError("give the photos to pre-train on: a folder, a manifest CSV or a pixel CSV")
    return concatenate([_load(item, settings, source) for item in items])


def _load(item: Any, settings: PretrainSettings, source: DataSource) -> ImageSet:
    if isinstance(item, (str, Path)) and str(item).lower().endswith(".csv") and not is_pixel_csv(Path(item)):
        item = _without_test_rows(read_manifest(item, source.label_from, None, source.root))
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], np.ndarray):
        item = item[0]  # (x, y): the labels are not needed
    return load_images(item, settings.image_size, settings.resize_mode, interpolation=settings.interpolation,
                       label_from=source.label_from, root=source.root, cache_dir=source.cache_dir,
                       on_bad_image=source.on_bad_image)


def _without_test_rows(manifest: Manifest) -> Manifest:
    """The manifest's rows outside its test split, without classes (rows without one are fine)."""
    if manifest.has_splits:
        manifest = manifest.take(manifest.split_codes != SPLITS.index("test"), f"{manifest.source} [not split=test]")
        if not len(manifest):
            raise ConfigError(f"{manifest.source}: every row is in the test split; give the training photos")
    return dataclasses.replace(manifest, label_codes=np.full(len(manifest), -1, dtype=np.int32))


def concatenate(sets: Sequence[ImageSet]) -> ImageSet:
    """One image set of several of the same size, in order; no pixels are copied until read."""
    if len(sets) == 1:
        return sets[0]
    starts = np.cumsum([0] + [len(image_set) for image_set in sets])
    height, width = sets[0].image_size

    def read(indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        pixels = np.empty((len(indices), height, width, 3), dtype=np.uint8)
        owner = np.searchsorted(starts, indices, side="right") - 1
        for k, image_set in enumerate(sets):
            chosen = owner == k
            if chosen.any():
                pixels[chosen] = image_set.read(indices[chosen] - starts[k])
        return pixels

    return ImageSet(
        names=TextArray.from_texts(name for image_set in sets for name in image_set.names),
        labels=None, read=read, image_size=sets[0].image_size,
        skipped=[row for image_set in sets for row in image_set.skipped],
    )
