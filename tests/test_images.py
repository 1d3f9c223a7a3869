"""Decoding: every format and mode Pillow reads becomes RGB uint8 of the requested size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitkit.data.images import load_image

RED = (200, 30, 40)


@pytest.mark.parametrize("suffix, save_as", [
    (".jpg", "JPEG"), (".png", "PNG"), (".bmp", "BMP"), (".gif", "GIF"), (".tif", "TIFF"), (".webp", "WEBP"),
])
def test_formats(tmp_path, suffix, save_as):
    path = tmp_path / f"red{suffix}"
    Image.new("RGB", (40, 30), RED).save(path, save_as, **({"lossless": True} if save_as == "WEBP" else {}))
    pixels = load_image(path, (16, 16))
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    tolerance = 12 if save_as in ("JPEG", "GIF") else 0
    assert np.abs(pixels.astype(int) - RED).max() <= tolerance


def _mode_image(mode: str) -> tuple[Image.Image, tuple[int, int, int]]:
    """A flat image in ``mode`` and the RGB colour it should decode to."""
    if mode == "L":
        return Image.new("L", (20, 20), 90), (90, 90, 90)
    if mode == "P":
        return Image.new("RGB", (20, 20), RED).convert("P", palette=Image.Palette.ADAPTIVE), RED
    if mode == "RGBA":  # half-transparent red over white
        return Image.new("RGBA", (20, 20), (*RED, 128)), tuple(round(c * 128 / 255 + 255 * 127 / 255) for c in RED)
    if mode == "CMYK":
        return Image.new("CMYK", (20, 20), (0, 255, 255, 0)), (255, 0, 0)
    if mode == "I;16":
        return Image.frombytes("I;16", (20, 20), np.full((20, 20), 257 * 60, "<u2").tobytes()), (60, 60, 60)
    if mode == "LA":
        return Image.new("LA", (20, 20), (0, 0)), (255, 255, 255)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    image, expected = _mode_image(mode)
    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    image.save(path)
    pixels = load_image(path, (8, 8))
    assert pixels.shape == (8, 8, 3)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_palette_transparency_is_composited_over_white(tmp_path):
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    image.paste(1, (0, 0, 5, 10))
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    pixels = load_image(tmp_path / "p.png", (10, 10))
    assert tuple(pixels[5, 1]) == RED and tuple(pixels[5, 8]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # white left half, landscape
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    shown = load_image(tmp_path / "rotated.jpg", (40, 20))
    assert shown[:20].mean() > 200 and shown[20:].mean() < 50  # white is now on top


@pytest.mark.parametrize("mode, expected_column_means", [
    ("stretch", None),
    ("pad", "borders are black"),
    ("crop", "centre only"),
])
def test_resize_modes(tmp_path, mode, expected_column_means):
    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, 20:40] = 255  # white centre third of a wide image
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", (30, 30), mode)
    assert out.shape == (30, 30, 3)
    if mode == "stretch":
        assert out[:, 12:18].mean() > 250 and out[:, :8].mean() < 5
    elif mode == "pad":  # the 3:1 image shrinks to 30x10, centred with black bands
        assert out[:9].max() == 0 and out[21:].max() == 0 and out[12:18, 12:18].mean() > 250
    else:  # the centre square of the wide image is its white third
        assert out[:, 3:27].mean() > 240
