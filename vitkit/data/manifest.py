"""Manifests: CSV lists of images (``base_path,type_dir,file_name[,label][,split]``), read and checked.

The image of a row is ``base_path/type_dir/file_name``; a relative ``base_path`` is relative to
the manifest's own folder (or to ``root`` when given). Every column is read as text, so a file
named ``0001`` stays ``0001``. The class of a row is its ``label`` when that column exists, else
its ``type_dir``; ``label_from="substring"`` with a class list applies the rule of the original
notebooks (the class whose name is contained in ``type_dir``).

A manifest is kept as columns: the image paths in one :class:`~vitkit.data.textarray.TextArray`
and classes, splits and CSV lines as small integer arrays, so a row costs its path's length plus
about 20 bytes (a list of row objects cost about 1 KB a row).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from array import array
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from vitkit.data.images import load_image
from vitkit.data.manifestcsv import LABEL_RULES, SPLITS, read_rows
from vitkit.data.textarray import TextArray, TextArrayBuilder
from vitkit.errors import ImageError, ManifestError


@dataclasses.dataclass(frozen=True)
class Entry:
    """One manifest row: the image path, its class (or None), its split (or None), its CSV line."""

    path: Path
    label: str | None
    split: str | None
    line: int


@dataclasses.dataclass(frozen=True, eq=False)
class Manifest:
    """Rows of a manifest file as columns, with where they came from.

    Attributes:
        files: the image path of each row.
        label_codes: each row's class as an index into ``label_names`` (-1: no class).
        label_names: the class names the codes refer to.
        split_codes: each row's split as an index into ``SPLITS`` (-1: none).
        lines: each row's CSV line.
        source: the manifest file (and split) the rows come from.
    """

    files: TextArray
    label_codes: np.ndarray
    label_names: tuple[str, ...]
    split_codes: np.ndarray
    lines: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.files)

    @property
    def paths(self) -> list[Path]:
        """Each row's image as a Path (made on each call; ``files`` holds them compactly)."""
        return [Path(file) for file in self.files]

    @property
    def labels(self) -> list[str | None]:
        """Each row's class (the same few string objects shared by all rows)."""
        names = self.label_names
        return [names[code] if code >= 0 else None for code in self.label_codes.tolist()]

    @property
    def entries(self) -> list[Entry]:
        """The rows as :class:`Entry` objects (made on each call)."""
        return [Entry(Path(file), label, SPLITS[split] if split >= 0 else None, line)
                for file, label, split, line in zip(self.files, self.labels, self.split_codes.tolist(),
                                                    self.lines.tolist())]

    @property
    def has_labels(self) -> bool:
        return len(self) > 0 and bool((self.label_codes >= 0).all())

    @property
    def has_splits(self) -> bool:
        return bool((self.split_codes >= 0).any())

    def classes(self) -> list[str]:
        """Sorted class names present in the rows."""
        return sorted(self.label_names[code] for code in np.unique(self.label_codes[self.label_codes >= 0]))

    def split(self, name: str) -> "Manifest":
        """Rows of one split (``train``, ``val`` or ``test``)."""
        code = SPLITS.index(name) if name in SPLITS else -2
        return self.take(self.split_codes == code, f"{self.source} [split={name}]")

    def take(self, rows: np.ndarray, source: str | None = None) -> "Manifest":
        """The rows at ``rows`` (positions or a boolean mask)."""
        return Manifest(self.files.take(rows), self.label_codes[rows], self.label_names, self.split_codes[rows],
                        self.lines[rows], self.source if source is None else source)

    def where(self, row: int) -> str:
        """``file.csv line 12`` of row ``row``, for messages."""
        return f"{self.source} line {self.lines[row]}"


def read_manifest(
    path: str | os.PathLike,
    label_from: str = "auto",
    classes: Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    encoding: str | None = None,
) -> Manifest:
    """Read and validate a manifest CSV (structure and classes; images are checked when loaded).

    The file is parsed and checked row by row, so memory grows only by the compact columns.

    Args:
        path: the CSV file.
        label_from: ``auto`` (``label`` column if present, else ``type_dir``), ``label``,
            ``type_dir`` or ``substring`` (needs ``classes``).
        classes: allowed class names; rows of other classes are an error.
        root: folder that relative ``base_path`` values are relative to (default: the
            manifest's folder).
        encoding: text encoding; by default UTF-8 (with or without BOM), then Shift-JIS.

    Raises:
        ManifestError: naming the file, the line and what to change.
    """
    path = Path(path)
    if label_from not in LABEL_RULES:
        raise ManifestError(f"label_from must be one of {LABEL_RULES}, got {label_from!r}")
    if label_from == "substring" and not classes:
        raise ManifestError("--label-from substring needs the class list: --classes a,b,c")
    base = Path(root) if root is not None else path.parent
    files = TextArrayBuilder()
    codes: dict[str | None, int] = {None: -1}
    label_codes, split_codes, lines, hashes = array("i"), array("b"), array("q"), array("q")
    for row in read_rows(path, label_from, classes, base, encoding):
        files.append(row.path)
        label_codes.append(codes.setdefault(row.label, len(codes) - 1))
        split_codes.append(SPLITS.index(row.split) if row.split is not None else -1)
        lines.append(row.line)
        hashes.append(hash(os.path.normcase(row.path)))
    if not len(files):
        raise ManifestError(f"{path}: has a header but no rows; add one row per image")
    manifest = Manifest(files.build(), np.frombuffer(label_codes, dtype=np.int32), tuple(codes)[1:],
                        np.frombuffer(split_codes, dtype=np.int8), np.frombuffer(lines, dtype=np.int64), str(path))
    return _without_duplicates(manifest, np.frombuffer(hashes, dtype=np.int64))


def _without_duplicates(manifest: Manifest, hashes: np.ndarray) -> Manifest:
    """The manifest without rows of an image seen before (with a warning); a different class or split
    for the same image is an error. Only rows whose path hashes collide are compared (``normcase``:
    on Windows, paths differing in case are one image)."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    shared = ordered[1:] == ordered[:-1]
    candidates = np.unique(np.concatenate([order[1:][shared], order[:-1][shared]]))
    first_seen: dict[str, int] = {}
    dropped = []
    for row in candidates.tolist():
        earlier = first_seen.setdefault(os.path.normcase(manifest.files[row]), row)
        if earlier == row:
            continue
        if (manifest.label_codes[earlier], manifest.split_codes[earlier]) != (manifest.label_codes[row],
                                                                             manifest.split_codes[row]):
            first, second = manifest.take([earlier, row]).entries
            raise ManifestError(
                f"{manifest.where(row)}: {second.path} is also on line {first.line} with another class or "
                f"split ({first.label}/{first.split} vs {second.label}/{second.split})"
            )
        dropped.append(row)
    if not dropped:
        return manifest
    warnings.warn(f"{manifest.source}: duplicate rows ignored (lines {_line_list(manifest.lines[dropped])})",
                  stacklevel=3)
    keep = np.ones(len(manifest), dtype=bool)
    keep[dropped] = False
    return manifest.take(keep)


def _line_list(lines: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(line) for line in lines[:limit])
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something wrong with a manifest row (``line`` 0 for the file as a whole)."""

    line: int
    message: str


def check_manifest(
    path: str | os.PathLike,
    label_from: str = "auto",
    classes: Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    encoding: str | None = None,
) -> list[Problem]:
    """Every problem of a manifest, by row: structure, classes, duplicates, missing or unreadable images.

    Structural errors (header, encoding, class rules) raise :class:`ManifestError` as in
    :func:`read_manifest`; image problems are collected so one run lists them all.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = read_manifest(path, label_from, classes, root, encoding)
    problems = [Problem(0, str(w.message)) for w in caught]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for line, error in zip(manifest.lines.tolist(), pool.map(_image_problem, manifest.files)):
            if error:
                problems.append(Problem(line, error))
    counts = Counter(manifest.labels)
    for name in classes or []:
        if counts[name] == 0:
            problems.append(Problem(0, f"class {name!r} has no rows"))
    if counts[None]:
        problems.append(Problem(0, f"{counts[None]} row(s) have no class (empty label)"))
    return sorted(problems, key=lambda problem: problem.line)


def _image_problem(path: str) -> str | None:
    try:
        load_image(Path(path), (16, 16))
    except ImageError as error:
        return str(error)
    return None
