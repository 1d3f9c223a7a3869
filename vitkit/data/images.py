"""Safe decoding: any file Pillow reads -> RGB uint8 array of the model's size.

Handles every Pillow mode (L, P, RGBA, CMYK, I;16, ...), applies EXIF orientation, takes the
first frame of animations, composites transparency over white, and refuses images whose
header announces more pixels than ``max_pixels`` before decoding them.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitkit.errors import ConfigError, ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 100_000_000
_PAD_VALUE = 0
_TRANSPARENT_BACKGROUND = (255, 255, 255)
_ORIENTATION = 0x0112
# How images are resampled to the model's size: bilinear (vitkit's default) or bicubic (what
# timm's checkpoints were trained and evaluated with).
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def max_pixels() -> int:
    """Largest image (width x height) decoded; ``VITKIT_MAX_IMAGE_PIXELS`` overrides."""
    text = os.environ.get("VITKIT_MAX_IMAGE_PIXELS", "")
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        return int(text.replace("_", ""))
    except ValueError:
        raise ConfigError(f"VITKIT_MAX_IMAGE_PIXELS must be a whole number of pixels, got {text!r}") from None


def load_image(path: str | os.PathLike, size: tuple[int, int], resize_mode: str = "stretch",
               interpolation: str = "bilinear") -> np.ndarray:
    """Decode ``path`` and resize it to ``size`` = (height, width).

    Args:
        path: image file.
        size: target (height, width).
        resize_mode: ``stretch`` (ignore aspect), ``pad`` (fit inside, black borders) or
            ``crop`` (fill, centre crop).
        interpolation: ``bilinear`` or ``bicubic`` (see :data:`INTERPOLATIONS`).

    Returns:
        ``(height, width, 3)`` uint8 RGB array.

    Raises:
        ImageError: missing, empty, unreadable, truncated, undecodable or oversized file.
    """
    path = os.fspath(path)  # not a Path: see vitkit.data.cache.image_key
    try:
        image = _open(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        reason = "empty file" if _size_or_none(path) == 0 else "not an image format Pillow can read"
        raise ImageError(f"{path}: {reason}") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path}: refused as a possible decompression bomb ({error})") from None
    except OSError as error:
        if error.errno is None:
            raise ImageError(f"{path}: damaged image header ({error})") from None
        raise ImageError(f"{path}: cannot be read ({error.strerror})") from None
    except ValueError as error:  # e.g. a NUL character in the path
        raise ImageError(f"{path}: cannot be opened ({error})") from None
    with image:
        _check_pixels(path, image.size)
        try:
            rgb = _decode(image, size)
        except MemoryError:
            raise ImageError(f"{path}: too large to decode in the memory available") from None
        except Exception as error:  # noqa: BLE001 - any decoder failure on file content
            raise ImageError(f"{path}: damaged or truncated image ({type(error).__name__}: {error})") from None
    return np.asarray(_resize(rgb, size, resize_mode, INTERPOLATIONS[interpolation]), dtype=np.uint8)


# Pillow warns (and at twice its limit refuses) in ``Image.open``, before vitkit's own size check
# can run. ``catch_warnings`` changes process-wide state, so opens are serialized; an open only
# reads the header, decoding happens afterwards in parallel.
_OPEN_LOCK = threading.Lock()


def _open(path: str) -> Image.Image:
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _size_or_none(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _decode(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """First frame, decoded, upright (EXIF orientation) and RGB."""
    image.seek(0)
    if image.format == "JPEG":
        rotated = image.getexif().get(_ORIENTATION) in (5, 6, 7, 8)
        image.draft("RGB", (size[0], size[1]) if rotated else (size[1], size[0]))
    image.load()
    return to_rgb(ImageOps.exif_transpose(image))


def _check_pixels(path: str, size: tuple[int, int]) -> None:
    if size[0] * size[1] > max_pixels():
        raise ImageError(
            f"{path}: {size[0]}x{size[1]} is more than {max_pixels():,} pixels; refused to protect "
            f"memory (set VITKIT_MAX_IMAGE_PIXELS to allow)"
        )
    if size[0] < 1 or size[1] < 1:
        raise ImageError(f"{path}: image has no pixels ({size[0]}x{size[1]})")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, _TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """High-bit-depth grey levels to 0-255: 16-bit ranges scale by 1/257, larger by the maximum."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    if top <= 255:
        scale = 1.0
    elif top <= 65535:
        scale = 1 / 257
    else:
        scale = 255 / top
    return np.clip(np.round(values * scale), 0, 255).astype(np.uint8)


def _resize(image: Image.Image, size: tuple[int, int], mode: str, resample: Image.Resampling) -> Image.Image:
    height, width = size
    if mode == "stretch":
        return image.resize((width, height), resample)
    source_width, source_height = image.size
    if mode == "crop":
        target_ratio = width / height
        if source_width / source_height > target_ratio:
            kept = source_height * target_ratio
            box = ((source_width - kept) / 2, 0, (source_width + kept) / 2, source_height)
        else:
            kept = source_width / target_ratio
            box = (0, (source_height - kept) / 2, source_width, (source_height + kept) / 2)
        return image.resize((width, height), resample, box=box)
    if mode == "pad":
        scale = min(width / source_width, height / source_height)
        inner = (max(1, round(source_width * scale)), max(1, round(source_height * scale)))
        canvas = Image.new("RGB", (width, height), (_PAD_VALUE,) * 3)
        canvas.paste(
            image.resize(inner, resample),
            ((width - inner[0]) // 2, (height - inner[1]) // 2),
        )
        return canvas
    raise ValueError(f"unknown resize mode {mode!r}")


def is_image_file(path: Path) -> bool:
    """True for files whose suffix is a supported image format (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES
