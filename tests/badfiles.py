"""Makers of awkward input files for the reliability tests: odd images, hand-made PNGs, pickles.

Kept apart from ``conftest.py`` because they are plain functions used by several test modules
(and by the fuzz test's strategies), not fixtures.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG file written by hand: signature, IHDR with the given header values, one IDAT, IEND.

    The header may claim any size: nothing checks that ``idat`` holds that many pixels, which is
    how decompression bombs and lying headers are made.
    """
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG of ``pixels`` (H, W, 3) uint16 (Pillow cannot write these)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    return png_bytes(width, height, 16, 2, zlib.compress(rows))


def zlib_bomb_png(side: int) -> bytes:
    """A 1-bit grey PNG of ``side`` x ``side`` zero pixels: a few hundred KB that inflate to side^2/8 bytes."""
    row = b"\x00" + bytes((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_bytes(side, side, 1, 0, data)


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def quadrants(height: int, width: int) -> np.ndarray:
    """An RGB image of four flat colours (red, green / blue, white), so orientation is visible."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w] = (255, 0, 0)
    image[:h, w:] = (0, 255, 0)
    image[h:, :w] = (0, 0, 255)
    image[h:, w:] = (255, 255, 255)
    return image


class TouchOnUnpickle:
    """Unpickling this object creates ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def marker_pickle(marker: Path) -> bytes:
    """Pickle bytes whose loading would create the file ``marker``."""
    return pickle.dumps(TouchOnUnpickle(Path(marker)))
