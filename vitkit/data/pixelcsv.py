"""Pixel CSVs (``label,pixel0,...,pixelN``): square grayscale images stored one per row."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from vitkit.errors import ManifestError

_PIXEL = re.compile(r"pixel(\d+)$")


def is_pixel_csv(path: str | os.PathLike) -> bool:
    """True when the first line is ``label`` followed by ``pixel0..pixelN`` columns."""
    try:
        with open(path, encoding="utf-8-sig") as stream:
            header = stream.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        return False
    return len(header) > 1 and header[0].strip() == "label" and all(_PIXEL.match(c.strip()) for c in header[1:])


def read_pixel_csv(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read a pixel CSV into ``(images, labels)``.

    Returns:
        ``images``: ``(n, side, side)`` uint8 grey levels; ``labels``: class names as text.

    Raises:
        ManifestError: non-square pixel count, values outside 0-255 or not numbers (with the line).
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"label": str}, keep_default_na=False, encoding="utf-8-sig")
    except (OSError, ValueError) as error:  # pandas parser errors are ValueErrors
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ManifestError(f"{path}: cannot be read as a pixel CSV ({detail})") from None
    if frame.empty:
        raise ManifestError(f"{path}: has a header but no rows; add one row per image")
    pixel_columns = [c for c in frame.columns if _PIXEL.match(str(c))]
    order = sorted(pixel_columns, key=lambda c: int(_PIXEL.match(c).group(1)))
    side = math.isqrt(len(order))
    if side * side != len(order) or [int(_PIXEL.match(c).group(1)) for c in order] != list(range(len(order))):
        raise ManifestError(f"{path}: needs pixel0..pixel(N-1) with N a square number, found {len(order)} pixel columns")
    values = frame[order].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (values > 255).any(axis=1))
    if bad_rows.size:
        raise ManifestError(
            f"{path} line {bad_rows[0] + 2}: pixel values must be numbers from 0 to 255 "
            f"({bad_rows.size} bad row(s))"
        )
    labels = frame["label"].astype(str).str.strip().tolist()
    empty = [i for i, label in enumerate(labels) if not label]
    if empty:
        raise ManifestError(f"{path} line {empty[0] + 2}: empty label")
    return np.round(values).astype(np.uint8).reshape(-1, side, side), labels
