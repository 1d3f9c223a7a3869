"""Manifests: CSV lists of images (``base_path,type_dir,file_name[,label][,split]``).

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
import random
from concurrent.futures import ThreadPoolExecutor
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from vitkit.errors import ImageError, ManifestError
from vitkit.fileio import atomic_output, check_writable
from vitkit.data.images import IMAGE_SUFFIXES, is_image_file, load_image

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


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), following links without looping.

    Other files (not hidden) are left out with a warning that counts them by suffix, so a
    folder of, say, HEIC photos does not silently come out empty.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"photo folder {folder} not found")
    found = []
    ignored: Counter = Counter()
    visited = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            if is_image_file(Path(name)):
                found.append(Path(current) / name)
            else:
                ignored[Path(name).suffix.lower() or "(no suffix)"] += 1
    if ignored:
        kinds = ", ".join(f"{count} {suffix}" for suffix, count in sorted(ignored.items()))
        warnings.warn(
            f"{folder}: ignored {sum(ignored.values())} file(s) that are not images vitkit reads ({kinds}); "
            f"supported: {', '.join(IMAGE_SUFFIXES)}",
            stacklevel=2,
        )
    return found


def folder_labels(folder: Path, images: Sequence[Path]) -> list[str] | None:
    """Class of each image from its first sub-folder under ``folder``; None unless every image has one."""
    parts = [image.relative_to(folder).parts for image in images]
    if not parts or any(len(p) < 2 for p in parts):
        return None
    return [p[0] for p in parts]


def manifest_rows_for_folder(photo_dir: Path, manifest_dir: Path) -> list[dict[str, str]]:
    """Rows for every image of a one-sub-folder-per-class tree (nested folders allowed)."""
    rows = []
    base = os.path.relpath(photo_dir.resolve(), manifest_dir.resolve())
    for image in find_images(photo_dir):
        relative = image.relative_to(photo_dir)
        if len(relative.parts) < 2:
            warnings.warn(f"{image}: not inside a class folder; skipped", stacklevel=2)
            continue
        rows.append({
            "base_path": Path(base).as_posix(),
            "type_dir": relative.parent.as_posix(),
            "file_name": relative.name,
            "label": relative.parts[0],
        })
    return rows


def stratified_split(labels: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Assign ``train``/``val``/``test`` per class with a seeded shuffle; train keeps at least one."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ManifestError(f"val and test fractions must be in [0, 1) and sum below 1, got {val_fraction}, {test_fraction}")
    splits = ["train"] * len(labels)
    rng = random.Random(seed)
    for name in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == name]
        rng.shuffle(members)
        count = len(members)
        n_test = round(count * test_fraction)
        n_val = round(count * val_fraction)
        while count - n_test - n_val < 1 and (n_test or n_val):
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        for i in members[:n_test]:
            splits[i] = "test"
        for i in members[n_test:n_test + n_val]:
            splits[i] = "val"
    return splits


def build_manifests(
    photo_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Counter]:
    """Write ``train.csv``, ``val.csv``, ``test.csv`` for a folder with one sub-folder per class.

    Returns:
        ``{split: Counter(class -> images)}``.
    """
    photo_dir, out_dir = Path(photo_dir), Path(out_dir)
    targets = {split: out_dir / f"{split}.csv" for split in SPLITS}
    for target in targets.values():
        check_writable(target, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = manifest_rows_for_folder(photo_dir, out_dir)
    if not rows:
        raise ManifestError(
            f"{photo_dir}: no images found in class sub-folders (expected PHOTO_DIR/<class>/<image>, "
            f"image suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    counts = Counter(row["label"] for row in rows)
    if len(counts) < 2:
        raise ManifestError(f"{photo_dir}: found only the class {list(counts)}; a classifier needs two or more class folders")
    for name, count in sorted(counts.items()):
        if count < 3:
            warnings.warn(f"class {name!r} has {count} image(s): too few for val and test splits", stacklevel=2)
    splits = stratified_split([row["label"] for row in rows], val_fraction, test_fraction, seed)
    summary = {split: Counter() for split in SPLITS}
    for split, target in targets.items():
        selected = [row for row, assigned in zip(rows, splits) if assigned == split]
        write_manifest(target, selected, overwrite=overwrite)
        summary[split].update(row["label"] for row in selected)
    return summary


def write_manifest(path: Path, rows: Iterable[dict[str, str]], overwrite: bool = False) -> Path:
    """Write manifest rows (dicts with the manifest columns) atomically as UTF-8 CSV."""
    rows = list(rows)
    columns = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if any(c in row for row in rows)]
    with atomic_output(path, overwrite=overwrite) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, columns)
            writer.writeheader()
            writer.writerows(rows)
    return path


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
