"""Writing H5 files whose array bytes go to disk outside Python's global interpreter lock.

h5py holds the lock for the whole of a dataset write, so a checkpoint written by h5py in a
background thread holds up the training thread's dispatch for as long as the write lasts. Here
h5py lays out the file only (groups, attributes and contiguous datasets, allocated at once and
left unfilled); the arrays' bytes then go to their datasets' offsets with ``os.pwrite``, which
releases the lock. The file is the one h5py would have written with the same data.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np


@dataclasses.dataclass(frozen=True)
class H5Group:
    """A group of an H5 file: its path (``""`` is the root), attributes and arrays.

    ``array_attrs`` holds attributes of single arrays, by array name.
    """

    path: str
    attrs: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray]
    array_attrs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


def write_h5(path: str | os.PathLike, groups: Iterable[H5Group], attrs: Mapping[str, Any] | None = None) -> None:
    """Write a new H5 file at ``path`` (replacing any file there) with ``groups`` and root ``attrs``."""
    pending: list[tuple[int, np.ndarray]] = []
    with h5py.File(path, "w") as handle:
        for name, value in (attrs or {}).items():
            handle.attrs[name] = value
        for group in groups:
            target = handle.require_group(group.path) if group.path else handle
            for name, value in group.attrs.items():
                target.attrs[name] = value
            for name, array in group.arrays.items():
                dataset = _dataset(target, name, array)
                for key, value in group.array_attrs.get(name, {}).items():
                    dataset.attrs[key] = value
                offset = dataset.id.get_offset() if _raw_writable(array) else None
                if offset is not None:
                    pending.append((offset, array))
                elif _raw_writable(array):  # no storage of its own yet (a scalar): a small write
                    dataset[()] = array
    if pending:
        _write_raw(Path(path), pending)


def _raw_writable(array: np.ndarray) -> bool:
    """Plain numbers in this machine's byte order: their file bytes are their memory bytes."""
    return array.dtype.kind in "fiu" and array.dtype.isnative and array.size > 0


def _dataset(group: h5py.Group, name: str, array: np.ndarray) -> h5py.Dataset:
    if not _raw_writable(array):
        return group.create_dataset(name, data=array)
    creation = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    creation.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    creation.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return group.create_dataset(name, shape=array.shape, dtype=array.dtype, dcpl=creation)


def _write_raw(path: Path, pending: list[tuple[int, np.ndarray]]) -> None:
    descriptor = os.open(path, os.O_WRONLY)
    try:
        for offset, array in pending:
            _write_at(descriptor, offset, np.ascontiguousarray(array))
    finally:
        os.close(descriptor)


def _write_at(descriptor: int, offset: int, array: np.ndarray) -> None:
    remaining = memoryview(array.reshape(-1)).cast("B")
    while remaining:
        written = os.pwrite(descriptor, remaining, offset)
        remaining, offset = remaining[written:], offset + written
