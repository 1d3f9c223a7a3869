"""Manifests: CSV lists of images (``base_path,type_dir,file_name[,label][,split]``), read and checked.

The image of a row is ``base_path/type_dir/file_name``; a relative ``base_path`` is relative to
the manifest's own folder (or to ``root`` when given). Every column is read as text, so a file
named ``0001`` stays ``0001``. The class of a row is its ``label`` when that column exists, else
its ``type_dir``; ``label_from="substring"`` with a class list applies the rule of the original
notebooks (the class whose name is contained in ``type_dir``).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import os
from concurrent.futures import ThreadPoolExecutor
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

from vitkit.errors import ImageError, ManifestError
from vitkit.data.images import load_image

REQUIRED_COLUMNS = ("base_path", "type_dir", "file_name")
OPTIONAL_COLUMNS = ("label", "split")
LABEL_RULES = ("auto", "label", "type_dir", "substring")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
_DELIMITERS = (",", ";", "\t", "|")
_ENCODINGS = ("utf-8-sig", "cp932")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One manifest row: the image path, its class (or None), its split (or None), its CSV line."""

    path: Path
    label: str | None
    split: str | None
    line: int


@dataclasses.dataclass
class Manifest:
    """Rows of one or more manifest files, with where each came from."""

    entries: list[Entry]
    source: str

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def paths(self) -> list[Path]:
        return [entry.path for entry in self.entries]

    @property
    def labels(self) -> list[str | None]:
        return [entry.label for entry in self.entries]

    @property
    def has_labels(self) -> bool:
        return bool(self.entries) and all(entry.label is not None for entry in self.entries)

    @property
    def has_splits(self) -> bool:
        return any(entry.split is not None for entry in self.entries)

    def classes(self) -> list[str]:
        """Sorted class names present in the rows."""
        return sorted({entry.label for entry in self.entries if entry.label is not None})

    def split(self, name: str) -> "Manifest":
        """Rows of one split (``train``, ``val`` or ``test``)."""
        return Manifest([e for e in self.entries if e.split == name], f"{self.source} [split={name}]")

    def where(self, row: Entry) -> str:
        """``file.csv line 12`` for messages."""
        return f"{self.source} line {row.line}"


def read_manifest(
    path: str | os.PathLike,
    label_from: str = "auto",
    classes: Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    encoding: str | None = None,
) -> Manifest:
    """Read and validate a manifest CSV (structure and classes; images are checked when loaded).

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
    text = _read_text(path, encoding)
    rows, header = _parse_rows(path, text)
    base = Path(root) if root is not None else path.parent
    entries = [_entry(path, header, row, line, base, label_from, classes) for line, row in rows]
    if not entries:
        raise ManifestError(f"{path}: has a header but no rows; add one row per image")
    return Manifest(_without_duplicates(path, entries), str(path))


def _read_text(path: Path, encoding: str | None) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found") from None
    except IsADirectoryError:
        raise ManifestError(f"{path} is a folder; give a manifest CSV file") from None
    except (OSError, ValueError) as error:
        raise ManifestError(f"manifest {path} cannot be read ({getattr(error, 'strerror', None) or error})") from None
    for candidate in (encoding,) if encoding else _ENCODINGS:
        try:
            text = data.decode(candidate)
        except UnicodeDecodeError:
            continue
        except LookupError:
            raise ManifestError(f"unknown text encoding {candidate!r}") from None
        if not text.strip():  # nothing, or only a byte order mark and blank lines
            raise ManifestError(
                f"{path}: empty file; a manifest starts with the header {','.join(REQUIRED_COLUMNS)}"
            )
        return text
    raise ManifestError(f"{path}: not UTF-8 or Shift-JIS text; save it as UTF-8 or pass --encoding")


def _parse_rows(path: Path, text: str) -> tuple[list[tuple[int, list[str]]], list[str]]:
    first_line = next(line for line in text.splitlines() if line.strip())
    delimiter = next((d for d in _DELIMITERS if set(REQUIRED_COLUMNS) <= set(_header_cells(first_line, d))), None)
    if delimiter is None:
        raise ManifestError(f"{path}: {_header_problem(first_line)}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    header: list[str] = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if not header:
                header = [column.strip() for column in row]
                duplicated = [name for name, count in Counter(header).items() if count > 1]
                if duplicated:
                    raise ManifestError(f"{path}: column(s) {duplicated} appear more than once in the header")
                continue
            if len(row) != len(header):
                raise ManifestError(
                    f"{path} line {reader.line_num}: {len(row)} fields, the header has {len(header)}; "
                    f"quote file names that contain '{delimiter}'"
                )
            rows.append((reader.line_num, row))
    except csv.Error as error:
        raise ManifestError(f"{path} line {reader.line_num}: not valid CSV ({error})") from None
    if not set(REQUIRED_COLUMNS) <= set(header):  # a quoted header cell that runs over lines
        raise ManifestError(f"{path}: {_header_problem(first_line)}")
    return rows, header


def _header_cells(line: str, delimiter: str) -> list[str]:
    """Column names of a header line, quoted or not."""
    try:
        return [cell.strip() for cell in next(csv.reader([line], delimiter=delimiter), [])]
    except csv.Error:
        return []


def _header_problem(first_line: str) -> str:
    columns = [c.strip() for c in first_line.replace(";", ",").replace("\t", ",").split(",")]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, columns, n=1, cutoff=0.6)
        hints.append(f"{name} (found {close[0]!r}?)" if close else name)
    return (
        f"the header must contain {','.join(REQUIRED_COLUMNS)}; missing: {', '.join(hints)}. "
        f"First line: {first_line[:120]!r}"
    )


def _entry(source: Path, header: list[str], row: list[str], line: int, base: Path,
           label_from: str, classes: Sequence[str] | None) -> Entry:
    values = dict(zip(header, (cell.strip() for cell in row)))
    where = f"{source} line {line}"
    if not values["file_name"]:
        raise ManifestError(f"{where}: empty file_name")
    if any("\x00" in value for value in values.values()):
        raise ManifestError(f"{where}: contains a NUL character; the file is damaged or not a text CSV")
    base_path = _expand_home(_portable_path(values["base_path"]))
    image = (base_path if base_path.is_absolute() else base / base_path) / _portable_path(values["type_dir"]) / values["file_name"]
    image = Path(os.path.normpath(image))
    label = _label(values, label_from, classes, where)
    split = values.get("split") or None
    if split is not None:
        if split.lower() not in _SPLIT_ALIASES:
            raise ManifestError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        split = _SPLIT_ALIASES[split.lower()]
    return Entry(image, label, split, line)


def _portable_path(text: str) -> Path:
    """A folder cell as a Path, accepting Windows ``\\`` separators on POSIX."""
    return Path(text.replace("\\", "/") if os.sep == "/" else text)


def _expand_home(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:  # ~user of an unknown user: keep it literal
        return path


def _label(values: dict[str, str], rule: str, classes: Sequence[str] | None, where: str) -> str | None:
    if rule == "substring":
        found = [name for name in classes if name in values["type_dir"]]
        if len(found) != 1:
            problem = "matches none" if not found else f"matches several ({', '.join(found)})"
            raise ManifestError(
                f"{where}: type_dir {values['type_dir']!r} {problem} of the classes "
                f"{', '.join(classes)}; rename the folder or add a label column"
            )
        return found[0]
    if rule == "label" or (rule == "auto" and "label" in values):
        if "label" not in values:
            raise ManifestError(f"{where}: --label-from label, but the manifest has no label column")
        label = values["label"] or None
    else:
        label = values["type_dir"] or None
    if label is not None and classes and label not in classes:
        raise ManifestError(
            f"{where}: class {label!r} is not one of {', '.join(classes)}; fix the row or the class list"
        )
    return label


def _without_duplicates(source: Path, entries: list[Entry]) -> list[Entry]:
    first_seen: dict[Path, Entry] = {}
    kept = []
    dropped = []
    for entry in entries:
        earlier = first_seen.get(entry.path)
        if earlier is None:
            first_seen[entry.path] = entry
            kept.append(entry)
        elif earlier.label != entry.label or earlier.split != entry.split:
            raise ManifestError(
                f"{source} line {entry.line}: {entry.path} is also on line {earlier.line} with "
                f"another class or split ({earlier.label}/{earlier.split} vs {entry.label}/{entry.split})"
            )
        else:
            dropped.append(entry.line)
    if dropped:
        warnings.warn(f"{source}: duplicate rows ignored (lines {_line_list(dropped)})", stacklevel=3)
    return kept


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
        for entry, error in zip(manifest.entries, pool.map(_image_problem, manifest.paths)):
            if error:
                problems.append(Problem(entry.line, error))
    counts = Counter(manifest.labels)
    for name in classes or []:
        if counts[name] == 0:
            problems.append(Problem(0, f"class {name!r} has no rows"))
    if counts[None]:
        problems.append(Problem(0, f"{counts[None]} row(s) have no class (empty label)"))
    return sorted(problems, key=lambda problem: problem.line)


def _image_problem(path: Path) -> str | None:
    try:
        load_image(path, (16, 16))
    except ImageError as error:
        return str(error)
    return None
