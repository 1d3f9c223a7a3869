"""The manifest CSV format, read as a stream of validated rows.

A manifest is a CSV file whose header contains ``base_path,type_dir,file_name`` (and optionally
``label`` and ``split``); the delimiter may be ``,``, ``;``, tab or ``|``. The file is never held
in memory whole: its encoding is found by decoding it block by block, then its rows are parsed
and checked one at a time, each problem naming the file, the CSV line and what to change.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import difflib
import os
from collections import Counter
from pathlib import Path
from typing import IO, Iterator, NamedTuple, Sequence

from vitkit.errors import ManifestError

REQUIRED_COLUMNS = ("base_path", "type_dir", "file_name")
OPTIONAL_COLUMNS = ("label", "split")
LABEL_RULES = ("auto", "label", "type_dir", "substring")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
_DELIMITERS = (",", ";", "\t", "|")
_ENCODINGS = ("utf-8-sig", "cp932")
_BLOCK = 1 << 20


class Row(NamedTuple):
    """One validated manifest row: its CSV line, image path, class (or None) and split (or None)."""

    line: int
    path: str
    label: str | None
    split: str | None


def read_rows(
    path: Path,
    label_from: str,
    classes: Sequence[str] | None,
    base: Path,
    encoding: str | None,
) -> Iterator[Row]:
    """The rows of the manifest ``path``, validated one by one as they are parsed.

    ``base`` is the folder relative ``base_path`` values start from. Raises :class:`ManifestError`
    at the first problem (header, encoding, a row's fields, class or split).
    """
    encoding = _text_encoding(path, encoding)
    with _opened(path, encoding) as text:
        first_line = _first_line(text)
    delimiter = next((d for d in _DELIMITERS if set(REQUIRED_COLUMNS) <= set(_header_cells(first_line, d))), None)
    if delimiter is None:
        raise ManifestError(f"{path}: {_header_problem(first_line)}")
    header: list[str] = []
    with _opened(path, encoding) as text:
        reader = csv.reader(text, delimiter=delimiter)
        try:
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                if not header:
                    header = _header(path, cells, first_line)
                    continue
                if len(cells) != len(header):
                    raise ManifestError(
                        f"{path} line {reader.line_num}: {len(cells)} fields, the header has {len(header)}; "
                        f"quote file names that contain '{delimiter}'"
                    )
                yield _row(f"{path} line {reader.line_num}", header, cells, reader.line_num, base, label_from, classes)
        except csv.Error as error:
            raise ManifestError(f"{path} line {reader.line_num}: not valid CSV ({error})") from None


@contextlib.contextmanager
def _opened(path: Path, encoding: str | None = None) -> Iterator[IO]:
    """``path`` opened as bytes, or as text in ``encoding``; failing to open it is a ManifestError."""
    try:
        stream = open(path, "rb") if encoding is None else open(path, encoding=encoding, newline="")
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} not found") from None
    except IsADirectoryError:
        raise ManifestError(f"{path} is a folder; give a manifest CSV file") from None
    except (OSError, ValueError) as error:
        raise ManifestError(f"manifest {path} cannot be read ({getattr(error, 'strerror', None) or error})") from None
    with stream:
        yield stream


def _text_encoding(path: Path, encoding: str | None) -> str:
    """The first candidate encoding that decodes the whole file (read in blocks, never whole)."""
    for candidate in (encoding,) if encoding else _ENCODINGS:
        try:
            decoder = codecs.getincrementaldecoder(candidate)()
        except LookupError:
            raise ManifestError(f"unknown text encoding {candidate!r}") from None
        blank = True
        try:
            with _opened(path) as raw:
                for block in iter(lambda: raw.read(_BLOCK), b""):
                    blank = not decoder.decode(block).strip() and blank
                blank = not decoder.decode(b"", final=True).strip() and blank
        except UnicodeDecodeError:
            continue
        except OSError as error:
            raise ManifestError(f"manifest {path} cannot be read ({error.strerror or error})") from None
        if blank:  # nothing, or only a byte order mark and blank lines
            raise ManifestError(
                f"{path}: empty file; a manifest starts with the header {','.join(REQUIRED_COLUMNS)}"
            )
        return candidate
    raise ManifestError(f"{path}: not UTF-8 or Shift-JIS text; save it as UTF-8 or pass --encoding")


def _first_line(text: Iterator[str]) -> str:
    """The first line with something on it, lines split as ``str.splitlines`` does."""
    for chunk in text:  # split at \n, \r and \r\n; splitlines also splits at \f, \x1c, \u2028...
        for line in chunk.splitlines():
            if line.strip():
                return line
    return ""


def _header(path: Path, cells: list[str], first_line: str) -> list[str]:
    header = [column.strip() for column in cells]
    duplicated = [name for name, count in Counter(header).items() if count > 1]
    if duplicated:
        raise ManifestError(f"{path}: column(s) {duplicated} appear more than once in the header")
    if not set(REQUIRED_COLUMNS) <= set(header):  # a quoted header cell that runs over lines
        raise ManifestError(f"{path}: {_header_problem(first_line)}")
    return header


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


def _row(where: str, header: list[str], cells: list[str], line: int, base: Path,
         label_from: str, classes: Sequence[str] | None) -> Row:
    values = dict(zip(header, (cell.strip() for cell in cells)))
    if not values["file_name"]:
        raise ManifestError(f"{where}: empty file_name")
    if any("\x00" in value for value in values.values()):
        raise ManifestError(f"{where}: contains a NUL character; the file is damaged or not a text CSV")
    # os.path, not pathlib: see vitkit.data.cache.image_key. An absolute base_path (or type_dir)
    # replaces what comes before it, as with pathlib's "/"; ~user of an unknown user stays literal.
    image = os.path.join(base, os.path.expanduser(_portable(values["base_path"])), _portable(values["type_dir"]),
                         values["file_name"])
    label = _label(values, label_from, classes, where)
    split = values.get("split") or None
    if split is not None:
        if split.lower() not in _SPLIT_ALIASES:
            raise ManifestError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        split = _SPLIT_ALIASES[split.lower()]
    return Row(line, os.path.normpath(image), label, split)


def _portable(folder: str) -> str:
    """A folder cell with Windows ``\\`` separators accepted on POSIX."""
    return folder.replace("\\", "/") if os.sep == "/" else folder


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
