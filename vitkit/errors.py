"""Error types: one per kind of user mistake, each message naming the file or row and the fix.

The command line prints these as one line (``vitkit: error: ...``) and exits with status 2;
anything else escaping is a bug in vitkit.
"""

from __future__ import annotations

import dataclasses


class VitkitError(Exception):
    """Base class of every error vitkit raises on purpose."""


class ManifestError(VitkitError):
    """A manifest or pixel CSV cannot be used (columns, rows, classes, splits)."""


class ImageError(VitkitError):
    """An image file cannot be decoded or is refused (missing, corrupt, too large)."""


class WeightsError(VitkitError):
    """A weights file or checkpoint cannot be found, downloaded or mapped onto the model."""


class ConfigError(VitkitError):
    """A model or training option is out of range or inconsistent with another one."""


def dataclass_from_dict(cls, values: dict, what: str):
    """``cls(**values)`` for a dataclass, refusing keys it has no field for with a :class:`ConfigError`."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


class OutputError(VitkitError):
    """An output file cannot be written (a file or folder in the way, read-only folder, disk full)."""


class OutputExistsError(OutputError):
    """An output file exists and ``overwrite`` was not given."""


class ResourceError(VitkitError):
    """The accelerator or the host ran out of memory."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
