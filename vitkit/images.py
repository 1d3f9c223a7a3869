"""Safe decoding: any file Pillow reads -> RGB uint8 array of the model's size.

Handles every Pillow mode (L, P, RGBA, CMYK, I;16, ...), applies EXIF orientation, takes the
first frame of animations, composites transparency over white, and refuses images whose
header announces more pixels than ``max_pixels`` before decoding them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitkit.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 100_000_000
_PAD_VALUE = 0
_TRANSPARENT_BACKGROUND = (255, 255, 255)


def max_pixels() -> int:
    """Largest image (width x height) decoded; ``VITKIT_MAX_IMAGE_PIXELS`` overrides."""
    return int(os.environ.get("VITKIT_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS))


def load_image(path: str | os.PathLike, size: tuple[int, int], resize_mode: str = "stretch") -> np.ndarray:
    """Decode ``path`` and resize it to ``size`` = (height, width).

    Args:
        path: image file.
        size: target (height, width).
        resize_mode: ``stretch`` (ignore aspect), ``pad`` (fit inside, black borders) or
            ``crop`` (fill, centre crop).

    Returns:
        ``(height, width, 3)`` uint8 RGB array.

    Raises:
        ImageError: missing, empty, unreadable, truncated or oversized file.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_pixels(path, image.size)
                image.seek(0)
                if image.format == "JPEG":
                    image.draft("RGB", (size[1], size[0]))
                image = ImageOps.exif_transpose(image)
                rgb = to_rgb(image)
                return np.asarray(_resize(rgb, size, resize_mode), dtype=np.uint8)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        reason = "empty file" if path.stat().st_size == 0 else "not an image format Pillow can read"
        raise ImageError(f"{path}: {reason}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{path}: refused, more than {max_pixels():,} pixels (set VITKIT_MAX_IMAGE_PIXELS to allow)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageError(f"{path}: damaged or truncated image ({error})") from None


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
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
    values = values.astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    if top <= 255:
        scale = 1.0
    elif top <= 65535:
        scale = 1 / 257
    else:
        scale = 255 / top
    return np.clip(np.round(values * scale), 0, 255).astype(np.uint8)


def _resize(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    height, width = size
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    source_width, source_height = image.size
    if mode == "crop":
        target_ratio = width / height
        if source_width / source_height > target_ratio:
            kept = source_height * target_ratio
            box = ((source_width - kept) / 2, 0, (source_width + kept) / 2, source_height)
        else:
            kept = source_width / target_ratio
            box = (0, (source_height - kept) / 2, source_width, (source_height + kept) / 2)
        return image.resize((width, height), Image.Resampling.BILINEAR, box=box)
    if mode == "pad":
        scale = min(width / source_width, height / source_height)
        inner = (max(1, round(source_width * scale)), max(1, round(source_height * scale)))
        canvas = Image.new("RGB", (width, height), (_PAD_VALUE,) * 3)
        canvas.paste(
            image.resize(inner, Image.Resampling.BILINEAR),
            ((width - inner[0]) // 2, (height - inner[1]) // 2),
        )
        return canvas
    raise ValueError(f"unknown resize mode {mode!r}")


def is_image_file(path: Path) -> bool:
    """True for files whose suffix is a supported image format (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES
