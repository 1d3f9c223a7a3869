"""Every kind of awkward photo: decoded right, skipped with a warning, or refused with a clear error.

Pixel checks compare with what the file holds, worked out independently (flat colours, NumPy
rotations of the EXIF specification, the 16-bit -> 8-bit rule), not with vitkit's own decoding.
"""

from __future__ import annotations

import json
import os
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badfiles import encoded, png_16bit_rgb, png_bytes, quadrants, zlib_bomb_png
from conftest import run_python
from vitkit.data.imageset import load_images
from vitkit.errors import ImageError
from vitkit.data.images import load_image
from vitkit.data.manifestbuild import build_manifests, find_images


def solid(colour, size=(12, 12), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# Refused with a clear error ------------------------------------------------------------------

def test_zero_byte_file_is_an_image_error(tmp_path):
    path = write(tmp_path / "empty.jpg", b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file"):
        load_image(path, (16, 16))


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_file_is_an_image_error(tmp_path, format):
    rng = np.random.default_rng(0)
    data = encoded(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), format)
    path = write(tmp_path / f"cut.{format.lower()}", data[: len(data) // 2])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(path, (16, 16))


def test_text_file_named_jpg_is_an_image_error(tmp_path):
    path = write(tmp_path / "notes.jpg", b"this is a shopping list, not a photo\n")
    with pytest.raises(ImageError, match="not an image format"):
        load_image(path, (16, 16))


def test_unsupported_format_is_an_image_error(tmp_path):
    heic_header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    path = write(tmp_path / "phone.jpg", heic_header)
    with pytest.raises(ImageError, match="not an image format Pillow can read"):
        load_image(path, (16, 16))


def test_unsupported_suffix_in_a_folder_is_ignored_with_a_warning(tmp_path):
    solid((1, 2, 3)).save(tmp_path / "a.png")
    write(tmp_path / "b.heic", b"\x00\x00\x00\x18ftypheic")
    write(tmp_path / "c.HEIC", b"\x00\x00\x00\x18ftypheic")
    with pytest.warns(UserWarning, match=r"ignored 2 file\(s\).*2 \.heic"):
        assert find_images(tmp_path) == [tmp_path / "a.png"]


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match=r"gone\.png: file not found"):
        load_image(tmp_path / "gone.png", (16, 16))


def test_folder_named_like_an_image_is_an_image_error(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path / "folder.jpg", (16, 16))


# Decoded right -------------------------------------------------------------------------------

def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = write(tmp_path / "cmyk.jpg", encoded(solid((0, 255, 255, 0), mode="CMYK"), "JPEG", quality=95))
    pixels = load_image(path, (8, 8))
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), (255, 0, 0), atol=4)


def test_16_bit_grey_png_is_scaled_to_8_bit(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 7]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    pixels = load_image(path, (4, 4))
    expected = np.round(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    values = np.zeros((4, 4, 3), dtype=np.uint16)
    values[..., 0], values[..., 1], values[..., 2] = 65535, 257 * 128, 0
    path = write(tmp_path / "rgb16.png", png_16bit_rgb(values))
    pixels = load_image(path, (4, 4))
    np.testing.assert_array_equal(pixels.reshape(-1, 3), np.tile([255, 128, 0], (16, 1)))


def test_palette_with_transparency_is_composited_over_white(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)
    image.putpixel((0, 0), 0)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    pixels = load_image(path, (4, 4))
    np.testing.assert_array_equal(pixels[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(pixels[3, 3], (200, 30, 10))


def test_rgba_alpha_is_composited_over_white(tmp_path):
    image = np.zeros((2, 3, 4), dtype=np.uint8)
    image[:, 0] = (10, 20, 30, 0)       # transparent -> white
    image[:, 1] = (10, 20, 30, 255)     # opaque -> itself
    image[:, 2] = (0, 0, 0, 128)        # half -> mid grey
    path = tmp_path / "rgba.png"
    Image.fromarray(image, "RGBA").save(path)
    pixels = load_image(path, (2, 3))
    np.testing.assert_array_equal(pixels[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(pixels[0, 1], (10, 20, 30))
    np.testing.assert_allclose(pixels[0, 2], [255 * (1 - 128 / 255)] * 3, atol=1)


@pytest.mark.parametrize("mode,value,expected", [("L", 77, 77), ("LA", (77, 255), 77), ("1", 1, 255)])
def test_grayscale_becomes_three_equal_channels(tmp_path, mode, value, expected):
    path = tmp_path / f"grey_{mode}.png"
    solid(value, mode=mode).save(path)
    pixels = load_image(path, (6, 6))
    assert (pixels == expected).all()


# EXIF orientation as the EXIF specification defines it, applied with NumPy.
_ORIENTED = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.rot90(a[:, ::-1], 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a[:, ::-1], -1),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(_ORIENTED))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = quadrants(10, 16)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"exif{orientation}.png"
    Image.fromarray(stored).save(path, exif=exif)
    upright = _ORIENTED[orientation](stored)
    pixels = load_image(path, upright.shape[:2])
    np.testing.assert_array_equal(pixels, upright)


def test_exif_rotated_jpeg_keeps_its_detail_with_reduced_decoding(tmp_path):
    """A large camera JPEG stored sideways, decoded at reduced size (JPEG draft mode), comes out
    upright and as sharp as resizing the full photo: the reduction follows the displayed sides."""
    upright = np.zeros((512, 256, 3), dtype=np.uint8)
    upright[:, (np.arange(256) // 8) % 2 == 1] = 255  # vertical stripes, 16 px period
    upright[:256, :128, 0] = 255  # a red mark at the top left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left; shown rotated 90 degrees clockwise
    stored = np.rot90(upright, 1)
    path = write(tmp_path / "camera.jpg", encoded(Image.fromarray(stored), "JPEG", quality=95, exif=exif))
    pixels = load_image(path, (32, 64)).astype(int)
    reference = np.asarray(Image.fromarray(upright).resize((64, 32), Image.Resampling.BILINEAR)).astype(int)

    def stripe_contrast(image):  # in the bottom half, away from the red mark
        row = image[24, 36:60, 1]
        return row.max() - row.min()

    assert stripe_contrast(pixels) >= stripe_contrast(reference) - 10
    assert pixels[:12, :28, 0].mean() > 200 and pixels[:12, :28, 1].mean() < 150  # red mark at the top left


def test_one_pixel_image_fills_the_target_in_every_resize_mode(tmp_path):
    path = tmp_path / "dot.png"
    solid((9, 99, 199), size=(1, 1)).save(path)
    for mode in ("stretch", "crop"):
        assert (load_image(path, (8, 12), mode) == (9, 99, 199)).all()
    padded = load_image(path, (8, 12), "pad")
    assert (padded[:, 2:10] == (9, 99, 199)).all()  # 8x8 centred, black borders
    assert (padded[:, :2] == 0).all() and (padded[:, 10:] == 0).all()


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [solid(colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    assert (load_image(path, (6, 6)) == (255, 0, 0)).all()


def test_png_named_jpg_is_decoded(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    solid((5, 6, 7)).save(path, format="PNG")
    assert (load_image(path, (4, 4)) == (5, 6, 7)).all()


def test_paths_with_spaces_and_non_ascii_characters(tmp_path):
    folder = tmp_path / "my photos" / "クラス é"
    folder.mkdir(parents=True)
    path = folder / "画像 1 (copy).png"
    solid((1, 2, 3)).save(path)
    assert (load_image(path, (4, 4)) == (1, 2, 3)).all()
    (tmp_path / "my photos" / "other").mkdir()
    solid((4, 5, 6)).save(tmp_path / "my photos" / "other" / "ü ß.png")
    with pytest.warns(UserWarning, match="too few for val and test"):  # one photo per class
        summary = build_manifests(tmp_path / "my photos", tmp_path / "lists", 0.0, 0.0)
    assert sum(summary["train"].values()) == 2
    images = load_images(tmp_path / "lists" / "train.csv", (4, 4), progress=False)
    assert sorted(images.labels) == ["other", "クラス é"]


# Decompression bombs ---------------------------------------------------------------------------

def test_lying_header_is_refused_before_decoding(tmp_path):
    path = write(tmp_path / "huge.png", png_bytes(100_000, 100_000, 8, 2, b"x\x9c\x03\x00\x00\x00\x00\x01"))
    with pytest.raises(ImageError, match="decompression bomb|refused"):
        load_image(path, (16, 16))


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    solid((0, 0, 0), size=(100, 100)).save(path)
    monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", "9999")
    with pytest.raises(ImageError, match=r"100x100 is more than 9,999 pixels.*VITKIT_MAX_IMAGE_PIXELS"):
        load_image(path, (16, 16))
    monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", "10000")
    assert load_image(path, (16, 16)).shape == (16, 16, 3)


def test_decompression_bombs_are_refused_without_using_memory(tmp_path):
    """A 40000^2 zlib bomb (1.6 G pixels, about 9 GB once decoded, in a 200 KB file) and a
    10^10-pixel lying header, measured in a fresh process: peak resident memory grows by less
    than 30 MB."""
    bomb = write(tmp_path / "bomb.png", zlib_bomb_png(40_000))
    liar = write(tmp_path / "liar.png", png_bytes(100_000, 100_000, 8, 2, b"x\x9c\x03\x00\x00\x00\x00\x01"))
    assert bomb.stat().st_size < 1_000_000
    code = textwrap.dedent(f"""
        import json, resource
        import numpy as np
        from vitkit.data.images import load_image
        from vitkit.errors import ImageError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        messages = []
        for path in ({str(bomb)!r}, {str(liar)!r}):
            try:
                load_image(path, (224, 224))
                messages.append("decoded")
            except ImageError as error:
                messages.append(str(error))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"grown_kb": after - before, "messages": messages}}))
    """)
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all("refused" in message for message in result["messages"]), result
    assert result["grown_kb"] < 30_000, result


# Symlink loops ---------------------------------------------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_symlink_loops_in_a_photo_folder(tmp_path):
    photos = tmp_path / "photos"
    for name, colour in (("circle", (200, 0, 0)), ("square", (0, 200, 0))):
        (photos / name).mkdir(parents=True)
        for i in range(3):
            solid(colour).save(photos / name / f"{name}{i}.png")
    (photos / "circle" / "back_to_top").symlink_to(photos, target_is_directory=True)
    (photos / "square" / "self.png").symlink_to(photos / "square" / "self.png")
    found = find_images(photos)
    assert len(found) == 7  # six photos and the looping link, each once
    summary = build_manifests(photos, tmp_path / "lists", 0.0, 0.0)
    assert sum(summary["train"].values()) == 7
    with pytest.warns(UserWarning, match="skipped 1 of 7.*self.png.*(symbolic links|cannot be read)"):
        images = load_images(tmp_path / "lists" / "train.csv", (8, 8), progress=False)
    assert len(images) == 6
    assert images.skipped[0].image.endswith("self.png") and "line" in images.skipped[0].row


# Through load_images: skip lists and the error policy ------------------------------------------

def test_bad_images_in_a_manifest_are_skipped_and_listed_with_their_rows(tmp_path):
    folder = tmp_path / "photos" / "a"
    folder.mkdir(parents=True)
    solid((1, 1, 1)).save(folder / "good.png")
    write(folder / "empty.png", b"")
    write(folder / "text.jpg", b"hello")
    manifest = tmp_path / "photos" / "list.csv"
    manifest.write_text("base_path,type_dir,file_name\n.,a,good.png\n.,a,empty.png\n.,a,missing.png\n.,a,text.jpg\n")
    with pytest.warns(UserWarning, match=r"skipped 3 of 4 .*list\.csv line 3"):
        images = load_images(manifest, (8, 8), progress=False)
    assert images.names == [str(folder / "good.png")]
    assert [(Path(s.image).name, s.row.split()[-1]) for s in images.skipped] == [
        ("empty.png", "3"), ("missing.png", "4"), ("text.jpg", "5")]
    assert [s.reason for s in images.skipped] == ["empty file", "file not found", "not an image format Pillow can read"]


def test_error_policy_stops_at_the_first_bad_row(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    solid((1, 1, 1)).save(folder / "good.png")
    write(folder / "cut.png", encoded(solid((1, 2, 3), size=(64, 64)), "PNG")[:60])
    manifest = tmp_path / "list.csv"
    manifest.write_text("base_path,type_dir,file_name\n.,a,good.png\n.,a,cut.png\n.,a,missing.png\n")
    with pytest.raises(ImageError, match=r"list\.csv line 3: .*cut\.png.*--on-bad-image skip"):
        load_images(manifest, (8, 8), on_bad_image="error", progress=False)


def test_error_policy_does_not_decode_past_a_missing_file(tmp_path):
    """A missing file early in a long list is reported before the rest are decoded."""
    folder = tmp_path / "a"
    folder.mkdir()
    for i in range(300):
        solid((i % 256, 0, 0)).save(folder / f"{i:03d}.png")
    rows = [".,a,000.png", ".,a,missing.png"] + [f".,a,{i:03d}.png" for i in range(1, 300)]
    manifest = tmp_path / "list.csv"
    manifest.write_text("base_path,type_dir,file_name\n" + "\n".join(rows) + "\n")
    from vitkit.data.cache import ImageStore

    with pytest.raises(ImageError, match=r"line 3: .*missing\.png: file not found"):
        load_images(manifest, (8, 8), on_bad_image="error", progress=False)
    store = ImageStore((8, 8), "stretch")
    decoded = store._index.execute("SELECT COUNT(*) FROM frames WHERE done = 1").fetchone()[0]
    assert decoded <= 256  # at most the first chunk, not all 300


def test_all_images_unreadable_is_an_error_not_an_empty_set(tmp_path):
    write(tmp_path / "a.png", b"")
    write(tmp_path / "b.png", b"garbage")
    with pytest.raises(ImageError, match="none of the 2 image"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_images(tmp_path, (8, 8), progress=False)
