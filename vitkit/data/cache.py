"""On-disk cache of decoded images: each image is decoded once per size, then read as raw uint8.

One store per (height, width, resize mode, interpolation) under ``$VITKIT_HOME/cache/images``: a flat file of
fixed-size uint8 frames (``pixels.u8``) and a SQLite index mapping an image key (absolute path,
file size, modification time) to its frame. Every manifest, epoch and later run at that size
shares it. Frames are read with ``pread`` into the batch buffer, so memory use does not grow with
the number of images (a memory map would keep every page it touched resident).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from vitkit.errors import ConfigError, ImageError
from vitkit.fileio import vitkit_home
from vitkit.data.images import load_image
from vitkit.progress import Progress

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    key TEXT PRIMARY KEY,
    slot INTEGER,
    error TEXT,
    done INTEGER NOT NULL DEFAULT 0
)
"""
_CHUNK = 256
_LOOKUP_BLOCK = 4096


def default_cache_dir() -> Path:
    """``$VITKIT_CACHE_DIR``, else ``$VITKIT_HOME/cache`` (default ``~/.keras/vitkit/cache``)."""
    return Path(os.environ.get("VITKIT_CACHE_DIR") or vitkit_home() / "cache")


def image_key(path: str | os.PathLike) -> str:
    """Identity of an image file's content as far as the file system tells: path, size, mtime.

    Made with ``os.path`` rather than ``pathlib``: on Python 3.11 every ``Path`` interns its parts,
    and the table of interned strings keeps its largest size, about 75 bytes per file name seen.
    """
    stat = os.stat(path)
    return f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


def _keys(paths: Sequence[str | os.PathLike], indices: Iterable[int], failures: dict[int, str]) -> dict[int, str]:
    """:func:`image_key` of ``paths[i]`` for each of ``indices``; a file that cannot be read goes to ``failures``."""
    keys = {}
    for i in indices:
        path = paths[i]
        try:
            keys[i] = image_key(path)
        except FileNotFoundError:
            failures[i] = f"{path}: file not found"
        except (OSError, ValueError) as error:
            failures[i] = f"{path}: cannot be read ({getattr(error, 'strerror', None) or error})"
    return keys


class ImageStore:
    """Decoded images of one size and resize mode.

    Example:
        >>> store = ImageStore((64, 64), "stretch")
        >>> frames, failures = store.frames(paths)   # decodes what is not cached yet
        >>> batch = store.read(frames[:32])           # (32, 64, 64, 3) uint8
    """

    def __init__(self, image_size: tuple[int, int], resize_mode: str = "stretch",
                 cache_dir: str | os.PathLike | None = None, interpolation: str = "bilinear"):
        self.image_size = tuple(image_size)
        self.resize_mode = resize_mode
        self.interpolation = interpolation
        # Bilinear stores keep the name they had before the interpolation could be chosen.
        store = f"{image_size[0]}x{image_size[1]}-{resize_mode}" + ("" if interpolation == "bilinear" else f"-{interpolation}")
        self.folder = Path(cache_dir or default_cache_dir()) / "images" / store
        self.frame_shape = (image_size[0], image_size[1], 3)
        self.frame_bytes = int(np.prod(self.frame_shape))
        self._lock = threading.Lock()
        self._fd = -1
        self.decoded = 0
        with self._cache_errors():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._index = sqlite3.connect(self.folder / "index.sqlite", timeout=60, check_same_thread=False)
            self._index.execute(_SCHEMA)
            self._index.commit()
            self._fd = os.open(self.folder / "pixels.u8", os.O_RDWR | os.O_CREAT, 0o644)

    @contextlib.contextmanager
    def _cache_errors(self) -> Iterator[None]:
        """Turn file-system and SQLite failures of the cache itself into one clear error."""
        try:
            yield
        except (OSError, sqlite3.Error) as error:
            detail = getattr(error, "strerror", None) or str(error)
            raise ConfigError(
                f"image cache {self.folder} cannot be used ({detail}); delete that folder, free some "
                f"space, or choose another with --cache-dir / VITKIT_CACHE_DIR"
            ) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if getattr(self, "_index", None) is not None:
            self._index.close()
            self._index = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def frames(self, paths: Sequence[str | os.PathLike], progress: bool = True,
               stop_at_failure: bool = False) -> tuple[np.ndarray, dict[int, str]]:
        """Frame numbers for ``paths``, decoding the ones not cached yet (in parallel).

        Paths are looked up in the index a block at a time, so nothing is kept per path beyond
        the result.

        Args:
            paths: image files.
            progress: show a progress bar while decoding.
            stop_at_failure: stop once the first failing image (in ``paths`` order) is known;
                later images are then left unchecked (frame -1, no failure entry).

        Returns:
            ``(frames, failures)``: ``frames[i]`` is -1 where image ``i`` failed, and
            ``failures[i]`` says why.
        """
        frames = np.full(len(paths), -1, dtype=np.int64)
        failures: dict[int, str] = {}
        pending = [np.zeros(0, dtype=np.int64)]
        for start in range(0, len(paths), _LOOKUP_BLOCK):
            if stop_at_failure and failures:
                break
            keys = _keys(paths, range(start, min(start + _LOOKUP_BLOCK, len(paths))), failures)
            with self._cache_errors():
                known = self._lookup(list(keys.values()))
            waiting = []
            for i, key in keys.items():
                slot, error = known.get(key, (None, None))
                if error is not None:
                    failures[i] = error
                elif slot is not None:
                    frames[i] = slot
                else:
                    waiting.append(i)
            pending.append(np.array(waiting, dtype=np.int64))
        pending = np.concatenate(pending)
        if len(pending):
            with self._cache_errors():
                self._decode(paths, pending, frames, failures, progress, stop_at_failure)
        return frames, failures

    def _lookup(self, keys: list[str]) -> dict[str, tuple[int | None, str | None]]:
        found = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, slot, error in self._index.execute(
                    f"SELECT key, slot, error FROM frames WHERE done = 1 AND key IN ({marks})", chunk
                ):
                    found[key] = (slot, error)
        return found

    def _decode(self, paths, pending: np.ndarray, frames, failures, progress, stop_at_failure) -> None:
        workers = os.cpu_count() or 2
        with Progress(len(pending), f"decoding {len(pending)} images", enabled=None if progress else False) as bar, \
                ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(pending), _CHUNK):
                if stop_at_failure and failures and min(failures) < pending[start]:
                    return
                chunk = pending[start:start + _CHUNK].tolist()
                keys = _keys(paths, chunk, failures)  # again: a file may have changed since the look-up
                bar.update(len(chunk) - len(keys))
                slots = self._reserve(list(keys.values()))
                results = pool.map(self._decode_one, [paths[i] for i in keys])
                done = []
                for (i, key), slot, result in zip(keys.items(), slots, results):
                    if isinstance(result, str):
                        failures[i] = result
                        done.append((None, result, key))
                    else:
                        os.pwrite(self._fd, result.tobytes(), slot * self.frame_bytes)
                        self.decoded += 1
                        frames[i] = slot
                        done.append((slot, None, key))
                    bar.update()
                self._mark_done(done)

    def _decode_one(self, path: str | os.PathLike) -> np.ndarray | str:
        try:
            image = load_image(path, self.image_size, self.resize_mode, self.interpolation)
        except ImageError as error:
            return str(error)
        return image

    def _reserve(self, keys: list[str]) -> list[int]:
        """Allocate frames for new keys in one transaction (safe across processes)."""
        with self._lock:
            cursor = self._index.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            slots = []
            next_slot = cursor.execute("SELECT COALESCE(MAX(slot) + 1, 0) FROM frames").fetchone()[0]
            for key in keys:
                row = cursor.execute("SELECT slot FROM frames WHERE key = ?", (key,)).fetchone()
                if row is not None and row[0] is not None:
                    slots.append(row[0])
                    continue
                cursor.execute(
                    "INSERT OR REPLACE INTO frames (key, slot, error, done) VALUES (?, ?, NULL, 0)",
                    (key, next_slot),
                )
                slots.append(next_slot)
                next_slot += 1
            cursor.execute("COMMIT")
            return slots

    def _mark_done(self, done: list[tuple[int | None, str | None, str]]) -> None:
        with self._lock:
            self._index.executemany(
                "UPDATE frames SET slot = COALESCE(?, slot), error = ?, done = 1 WHERE key = ?", done
            )
            self._index.commit()

    def read(self, frames: Sequence[int] | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Read frames into a ``(n, H, W, 3)`` uint8 array (``out`` reused when given)."""
        frames = np.asarray(frames, dtype=np.int64)
        if out is None:
            out = np.empty((len(frames), *self.frame_shape), dtype=np.uint8)
        for row, frame in zip(out, frames):
            if os.preadv(self._fd, [row], int(frame) * self.frame_bytes) != self.frame_bytes:
                raise ImageError(
                    f"image cache {self.folder} is damaged (frame {frame} is short); delete that folder"
                )
        return out
