"""Safe output files: no silent overwrite, atomic replace, names that cannot escape a folder,
CSV cells that a spreadsheet does not run as formulas."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from vitkit.errors import OutputError, OutputExistsError

# Write failures that are about the destination (space, permissions), not about the data.
_DESTINATION_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``path`` as a Path, refusing an existing file unless ``overwrite``.

    Raises:
        OutputExistsError: the file (or folder) exists and ``overwrite`` is false.
        OutputError: one of its parents is a file.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    return path


def _output_error(path: Path, error: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {error.strerror or error}; choose another place or free some space")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    A crash or an exception leaves any existing file untouched and removes the temporary one.
    ``suffix`` is appended to the temporary name for writers that insist on an extension.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        OutputError: ``path`` is a folder, the folder cannot be created or written, or the disk
            is full.
    """
    path = check_writable(path, overwrite)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as error:
        raise _output_error(path, error) from None
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if error.errno in _DESTINATION_ERRORS:
            raise _output_error(path, error) from None
        raise
    finally:
        temporary.unlink(missing_ok=True)


def remove_temporaries(path: str | os.PathLike) -> None:
    """Delete the temporary files a killed process left beside ``path`` in :func:`atomic_output`."""
    path = Path(path)
    if path.parent.is_dir():
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
            leftover.unlink(missing_ok=True)


def link_in_place_of(source: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Make ``path`` a hard link to ``source`` (replacing ``path``); False where links are not possible.

    Only for files that are never changed in place: both names then keep the same bytes.
    """
    path = Path(path)
    try:
        path.unlink(missing_ok=True)
        os.link(source, path)
    except OSError:
        return False
    return True


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write a text file atomically (UTF-8)."""
    with atomic_output(path, overwrite) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_file_stem(name: str, max_length: int = 120) -> str:
    """A file name made from arbitrary text (an image path, a row) that stays inside its folder.

    Path separators, ``..``, control characters and anything else outside letters, digits,
    ``.``, ``-`` and ``_`` become ``_``; the result is never empty, never starts with a dot,
    and its UTF-8 form is at most ``max_length`` bytes (file systems count bytes, not letters).

    Example:
        >>> safe_file_stem("../../etc/x")
        'etc_x'
    """
    stem = _UNSAFE.sub("_", name.replace(os.sep, "_").replace("/", "_")).strip("._")
    stem = stem.encode("utf-8")[:max_length].decode("utf-8", errors="ignore").rstrip("._")
    return stem or "image"


# First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` with a ``'`` in front when it is text that a spreadsheet would run as a formula.

    Text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (an image named
    ``=HYPERLINK(...).jpg``, a class named ``-1``) is written as ``'=HYPERLINK(...).jpg``;
    spreadsheets show the quote-prefixed cell as text. Anything else, numbers included, is
    returned unchanged. Used for every CSV written for people (predictions, evaluation and
    explanation tables, lists of skipped images), never for manifests: vitkit reads those back
    and a changed name would no longer find its file.

    Example:
        >>> spreadsheet_safe("=1+1"), spreadsheet_safe("mug.jpg"), spreadsheet_safe(-1.5)
        ("'=1+1", 'mug.jpg', -1.5)
    """
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def vitkit_home() -> Path:
    """``$VITKIT_HOME``, or ``~/.keras/vitkit``."""
    return Path(os.environ.get("VITKIT_HOME") or Path.home() / ".keras" / "vitkit")


def unused_path(path: str | os.PathLike) -> Path:
    """``path`` if nothing is there, else the first free ``STEM-2.EXT``, ``STEM-3.EXT``, ..."""
    path = Path(path)
    number = 1
    candidate = path
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate
