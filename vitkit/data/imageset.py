"""Image sets: anything a user hands in -> uint8 images of the model's size, read on demand.

Accepted inputs: a manifest CSV (or :class:`~vitkit.data.manifest.Manifest`), a pixel CSV, a folder
or list of image files, in-memory arrays ``x`` or ``(x, y)``. File images go through the
on-disk :class:`~vitkit.data.cache.ImageStore`. Nothing here needs Keras; batch streams for it
are in :mod:`vitkit.data.batches`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from vitkit.data.cache import ImageStore
from vitkit.data.images import INTERPOLATIONS
from vitkit.errors import ConfigError, ImageError, ManifestError
from vitkit.fileio import atomic_output, spreadsheet_safe
from vitkit.data.manifest import Manifest, read_manifest
from vitkit.data.manifestbuild import find_images, folder_labels
from vitkit.data.pixelcsv import is_pixel_csv, read_pixel_csv
from vitkit.data.textarray import TextArray


BAD_IMAGE_POLICIES = ("skip", "error")


class SkippedImage(NamedTuple):
    """An image left out under ``on_bad_image="skip"``: its file, manifest row (or ``""``) and why."""

    image: str
    row: str
    reason: str


def write_skipped(skipped: Sequence[SkippedImage], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the skipped images as a CSV (``image,row,reason``), atomically; cells are :func:`spreadsheet_safe`."""
    with atomic_output(path, overwrite=overwrite) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(SkippedImage._fields)
            writer.writerows([spreadsheet_safe(cell) for cell in row] for row in skipped)
    return Path(path)


@dataclasses.dataclass
class ImageSet:
    """Images of one size with display names, optional labels and what was skipped.

    ``read(indices)`` returns ``(len(indices), H, W, 3)`` uint8. ``names`` (image paths) are a
    :class:`TextArray` (a list of names given is converted); each label is one of a few shared strings.
    """

    names: TextArray
    labels: list[str] | None
    read: Callable[[np.ndarray], np.ndarray]
    image_size: tuple[int, int]
    skipped: list[SkippedImage] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.names, TextArray):
            self.names = TextArray.from_texts(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def label_indices(self, class_names: Sequence[str]) -> np.ndarray:
        """Labels as indices into ``class_names``; an unknown class is an error naming the image."""
        if self.labels is None:
            raise ManifestError("these images have no labels; give a manifest with classes")
        lookup = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({label for label in self.labels if label not in lookup})
        if unknown:
            example = self.names[[label in unknown for label in self.labels].index(True)]
            raise ManifestError(
                f"class(es) {unknown} are not among the model's classes {list(class_names)} "
                f"(e.g. {example}); remove those rows or train a model that has them"
            )
        return np.array([lookup[label] for label in self.labels], dtype=np.int64)

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """The images at ``indices`` (same reader, no copy of pixels)."""
        chosen = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            names=self.names.take(chosen),
            labels=None if self.labels is None else [self.labels[i] for i in chosen],
            read=lambda rows: self.read(chosen[np.asarray(rows)]),
            image_size=self.image_size,
            skipped=self.skipped,
        )

    def all_pixels(self) -> np.ndarray:
        """Every image in memory (only for small sets: figures, tests)."""
        return self.read(np.arange(len(self)))


def load_images(
    data: Any,
    image_size: tuple[int, int],
    resize_mode: str = "stretch",
    *,
    label_from: str = "auto",
    classes: Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    on_bad_image: str = "skip",
    progress: bool = True,
    interpolation: str = "bilinear",
) -> ImageSet:
    """Bring any supported input to an :class:`ImageSet` of ``image_size``.

    Args:
        data: manifest CSV path or :class:`Manifest`, pixel CSV path, folder (its images are
            labelled by their first sub-folder when every image has one), image file, list of
            image files, uint8 array ``x`` (N, H, W[, C]) or ``(x, y)``.
        image_size: (height, width) of the model.
        resize_mode: ``stretch``, ``pad`` or ``crop``.
        label_from, classes, root: passed to :func:`~vitkit.data.manifest.read_manifest`.
        cache_dir: image cache folder (default ``$VITKIT_HOME/cache``).
        on_bad_image: ``skip`` (warn, drop the image, list it in ``skipped``) or ``error``
            (raise at the first bad image with its manifest line).
        progress: show a progress bar while decoding.
        interpolation: ``bilinear`` or ``bicubic`` resampling to ``image_size``.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, tuple) and len(data) == 2 and not _is_path(data[0]):
        x, y = data
        return _array_set(np.asarray(x), [str(label) for label in np.asarray(y).tolist()], image_size, interpolation)
    if isinstance(data, np.ndarray):
        return _array_set(data, None, image_size, interpolation)
    files = functools.partial(_file_set, image_size=image_size, resize_mode=resize_mode, cache_dir=cache_dir,
                              on_bad_image=on_bad_image, progress=progress, interpolation=interpolation)
    if isinstance(data, Manifest):
        unlabelled = np.flatnonzero(data.label_codes < 0)
        if len(unlabelled) and len(unlabelled) < len(data):
            warnings.warn(
                f"{data.where(unlabelled[0])}: {len(unlabelled)} row(s) have an empty class, so the "
                f"manifest's classes are not used; fill them in or remove those rows",
                stacklevel=2,
            )
        return files(data.files, data.labels if data.has_labels else None, data.where)
    if _is_path(data):
        path = Path(data)
        if path.is_dir():
            found = find_images(path)
            if not found:
                raise ManifestError(f"{path}: no image files found")
            return files(found, folder_labels(path, found), None)
        if path.suffix.lower() == ".csv":
            if is_pixel_csv(path):
                pixels, labels = read_pixel_csv(path)
                return _array_set(pixels, labels, image_size, interpolation)
            manifest = read_manifest(path, label_from, classes, root)
            return load_images(manifest, image_size, resize_mode, cache_dir=cache_dir,
                               on_bad_image=on_bad_image, progress=progress, interpolation=interpolation)
        return files([path], None, None)
    if isinstance(data, (list, tuple)) and all(_is_path(item) for item in data):
        return files([Path(p) for p in data], None, None)
    raise ConfigError(
        f"cannot read images from {type(data).__name__}; give a manifest or pixel CSV, a folder, "
        f"image files, an array x or a pair (x, y)"
    )


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _file_set(paths: Sequence[str | os.PathLike], labels: list[str] | None, origin: Callable[[int], str] | None,
              *, image_size, resize_mode, cache_dir, on_bad_image, progress, interpolation) -> ImageSet:
    """Images of files; ``origin(i)`` names where file ``i`` came from (``file.csv line 12``)."""
    if not isinstance(paths, TextArray):
        paths = TextArray.from_texts(str(path) for path in paths)
    store = ImageStore(image_size, resize_mode, cache_dir, interpolation)
    frames, failures = store.frames(paths, progress=progress, stop_at_failure=on_bad_image == "error")
    skipped = []
    if failures:
        first = min(failures)
        where = f"{origin(first)}: " if origin else ""
        if on_bad_image == "error":
            raise ImageError(f"{where}{failures[first]}; fix or remove it, or use --on-bad-image skip")
        skipped = [SkippedImage(paths[i], origin(i) if origin else "", _reason(paths[i], failures[i]))
                   for i in sorted(failures)]
        if len(failures) == len(paths):
            raise ImageError(f"none of the {len(paths)} image(s) can be read; first: {where}{failures[first]}")
        warnings.warn(
            f"skipped {len(failures)} of {len(paths)} images that cannot be read; first: {where}{failures[first]}",
            stacklevel=3,
        )
    keep = frames >= 0
    if not keep.all():
        paths, frames = paths.take(keep), frames[keep]
        labels = None if labels is None else [label for label, k in zip(labels, keep.tolist()) if k]
    return ImageSet(
        names=paths,
        labels=labels,
        read=lambda indices: store.read(frames[np.asarray(indices)]),
        image_size=tuple(image_size),
        skipped=skipped,
    )


def _reason(path: str, message: str) -> str:
    """A failure message without the leading ``PATH: `` (the path has its own column)."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _array_set(images: np.ndarray, labels: list[str] | None, image_size: tuple[int, int],
               interpolation: str = "bilinear") -> ImageSet:
    pixels = to_uint8_images(images, image_size, interpolation)
    if labels is not None and len(labels) != len(pixels):
        raise ConfigError(f"{len(pixels)} images but {len(labels)} labels")
    return ImageSet(
        names=TextArray.from_texts(f"array[{i}]" for i in range(len(pixels))),
        labels=labels,
        read=lambda indices: pixels[np.asarray(indices)],
        image_size=tuple(image_size),
    )


def to_uint8_images(images: np.ndarray, image_size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """``(N, H, W)``, ``(N, H, W, 1)`` or ``(N, H, W, 3)`` pixel values 0-255 -> uint8 RGB of ``image_size``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ConfigError(f"images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3); got shape {images.shape}")
    if images.dtype != np.uint8:
        if images.size and (np.nanmin(images) < 0 or np.nanmax(images) > 255 or np.isnan(images).any()):
            raise ConfigError("image arrays must hold pixel values from 0 to 255")
        images = np.round(images).astype(np.uint8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if images.shape[1:3] == tuple(image_size):
        return images
    height, width = image_size
    return np.stack([
        np.asarray(Image.fromarray(image).resize((width, height), INTERPOLATIONS[interpolation]))
        for image in images
    ])
