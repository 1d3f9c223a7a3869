"""Safe output files: no silent overwrite, atomic replace, names that cannot escape a folder."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from vitkit.errors import OutputExistsError


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``path`` as a Path, refusing an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite (overwrite=True) to replace it")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    A crash or an exception leaves any existing file untouched and removes the temporary one.
    ``suffix`` is appended to the temporary name for writers that insist on an extension.
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """Write a text file atomically (UTF-8)."""
    with atomic_output(path, overwrite) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_file_stem(name: str, max_length: int = 120) -> str:
    """A file name made from arbitrary text (an image path, a row) that stays inside its folder.

    Path separators, ``..`` and control characters become ``_``; the result is never empty
    and never starts with a dot.
    """
    stem = _UNSAFE.sub("_", name.replace(os.sep, "_").replace("/", "_")).strip("._")
    return (stem or "image")[:max_length]
