"""Image sets and batch streams: anything a user hands in -> uint8 batches of the model's size.

Accepted inputs: a manifest CSV (or :class:`~vitkit.data.manifest.Manifest`), a pixel CSV, a folder
or list of image files, in-memory arrays ``x`` or ``(x, y)``. File images go through the
on-disk :class:`~vitkit.data.cache.ImageStore`; batches are streamed as uint8 with bounded memory by
a ``keras.utils.PyDataset``, which needs no TensorFlow on the JAX backend.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import keras
import numpy as np
from PIL import Image

from vitkit.data.cache import ImageStore
from vitkit.data.images import INTERPOLATIONS
from vitkit.device import batch_stager
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


class ImageBatches(keras.utils.PyDataset):
    """uint8 batches of an :class:`ImageSet`, with one-hot labels and sample weights when known.

    The order of epoch ``e`` is a function of ``(seed, e)`` only, so a resumed run sees the same
    batches as an uninterrupted one.

    For training over several processes, ``shard=(index, count)`` makes the stream yield one
    process's part of each global batch: the epoch's order is cut into global batches of
    ``batch_size * count`` samples and this stream yields the ``index``-th of ``count`` equal,
    contiguous slices of each. Put side by side in process order, the shards' batches are the
    batches of one unsharded stream of ``batch_size * count``, so every process sees its own
    samples and together they see each sample of the epoch once.

    Samples left out of an epoch: with ``drop_remainder``, the last incomplete global batch
    (unless the set is smaller than one global batch); otherwise the last
    ``len(images) % multiple_of`` samples of the epoch's order, so every global batch splits
    evenly over ``multiple_of`` devices (1: none left out).

    ``workers`` threads read (and stage onto the accelerator) the next batches while the model
    works on the current one. The stream does this itself rather than through Keras' worker
    pool: that pool starts reading before ``fit`` begins and hands the batches it read to later
    epochs, so what a step trained on would depend on thread timing.
    """

    def __init__(
        self,
        images: ImageSet,
        batch_size: int,
        class_names: Sequence[str] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        sample_weights: np.ndarray | None = None,
        drop_remainder: bool = False,
        shard: tuple[int, int] = (0, 1),
        multiple_of: int = 1,
        workers: int = 2,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        index, count = shard
        if not 0 <= index < count or multiple_of % count:
            raise ValueError(f"shard {shard} must be (index, count) with 0 <= index < count and count dividing "
                             f"multiple_of ({multiple_of})")
        if len(images) and len(images) < multiple_of:
            raise ConfigError(f"{len(images)} image(s) cannot be shared evenly by {multiple_of} devices; "
                              f"add images or use fewer devices")
        self.images = images
        self.batch_size = batch_size
        self.targets = None
        if class_names is not None:
            self.targets = np.eye(len(class_names), dtype=np.float32)[images.label_indices(class_names)]
        self.sample_weights = sample_weights
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder and len(images) >= batch_size * count
        self.shard = shard
        self.multiple_of = multiple_of
        self.epoch = 0
        self._order = self._epoch_order()
        self._stage = batch_stager() or (lambda pixels: pixels)
        self._read_ahead = workers if workers > 1 else 0
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="vitkit-batches") if self._read_ahead else None
        self._pending: dict[tuple[int, int], Future] = {}

    def _epoch_order(self) -> np.ndarray:
        order = np.arange(len(self.images))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        step = self.batch_size * self.shard[1] if self.drop_remainder else self.multiple_of
        return order[:len(order) - len(order) % step]

    def set_epoch(self, epoch: int) -> None:
        """Jump to the order of ``epoch`` (for resumed training)."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        self._order = self._epoch_order()
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()

    def __len__(self) -> int:
        return math.ceil(len(self._order) / (self.batch_size * self.shard[1]))

    def __getitem__(self, index: int):
        ready = self._pending.pop((self.epoch, index), None)
        batch = ready.result() if ready is not None else self._batch(self._order, index)
        if self._pool is not None:
            for ahead in range(index + 1, min(index + 1 + self._read_ahead, len(self))):
                if (self.epoch, ahead) not in self._pending:
                    self._pending[self.epoch, ahead] = self._pool.submit(self._batch, self._order, ahead)
        return batch

    def _batch(self, order: np.ndarray, index: int):
        """Batch ``index`` of an epoch's ``order`` (passed in, so a read-ahead keeps its epoch)."""
        shard, count = self.shard
        start = index * self.batch_size * count
        share = (min(start + self.batch_size * count, len(order)) - start) // count
        selected = order[start + shard * share:start + (shard + 1) * share]
        pixels = self._stage(self.images.read(selected))
        if self.targets is None:
            return (pixels,)
        if self.sample_weights is None:
            return pixels, self.targets[selected]
        return pixels, self.targets[selected], self.sample_weights[selected]

    def __del__(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)


def follow_epochs(stream: keras.utils.PyDataset) -> keras.callbacks.Callback:
    """A callback for ``fit`` that sets ``stream`` (anything with ``set_epoch``) to the epoch Keras starts.

    Keras also calls ``on_epoch_end`` when a ``fit`` begins, so counting those calls does not
    tell which epoch is running; with this callback epoch ``e`` always reads the order of
    ``(seed, e)``, in a first run and after a resume alike.
    """
    return _FollowEpochs(stream)


class _FollowEpochs(keras.callbacks.Callback):
    def __init__(self, stream: keras.utils.PyDataset):
        super().__init__()
        self.stream = stream

    def on_epoch_begin(self, epoch, logs=None):
        self.stream.set_epoch(epoch)
