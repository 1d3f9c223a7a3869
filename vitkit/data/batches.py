"""Batch streams for Keras: an :class:`~vitkit.data.imageset.ImageSet` -> uint8 batches.

Batches are streamed with bounded memory by a ``keras.utils.PyDataset``, which needs no
TensorFlow on the JAX backend.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

import keras
import numpy as np

from vitkit.data.imageset import ImageSet
from vitkit.device import batch_stager
from vitkit.errors import ConfigError


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
