"""Fuzzing with Hypothesis: manifests rows and image bytes drawn at random (valid files, mutated
files, garbage), fed to the loaders, ``manifest check`` and ``predict``.

Whatever the input, vitkit either works or raises one of its own errors (a ``VitkitError``), and a
run never leaves a partial or temporary output file. The example counts are small so the module
runs in well under a minute; raise ``VITKIT_FUZZ_EXAMPLES`` to search longer.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from badfiles import encoded
from conftest import TINY_BACKBONE
from vitkit.data.imageset import load_images
from vitkit.errors import VitkitError
from vitkit.fileio import safe_file_stem
from vitkit.data.manifest import check_manifest

SCALE = int(os.environ.get("VITKIT_FUZZ_EXAMPLES", "1"))
_FUZZ = settings(deadline=None, print_blob=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def fuzz(examples: int) -> settings:
    return settings(_FUZZ, max_examples=examples * SCALE)

FORMATS = {  # format -> modes it can store
    "PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"],
    "JPEG": ["RGB", "L", "CMYK"],
    "GIF": ["P", "L", "RGB"],
    "BMP": ["RGB", "L", "P", "1"],
    "TIFF": ["RGB", "RGBA", "L", "CMYK", "I;16", "F"],
    "WEBP": ["RGB", "RGBA"],
}
NAMES = ["a.png", "b.jpg", "c.gif", "d.bmp", "e.tif", "f.webp", "g h.png", "é.jpg"]
CLASSES = ["circle", "square"]


@st.composite
def image_files(draw) -> bytes:
    """Bytes of a small image in any format and mode, often damaged afterwards."""
    how = draw(st.sampled_from(["valid", "valid", "truncated", "flipped", "garbage", "empty", "exif"]))
    if how == "garbage":
        return draw(st.binary(max_size=400))
    if how == "empty":
        return b""
    format = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[format]))
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    pixels = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode) if mode not in ("I;16", "F") else \
        Image.fromarray(pixels[..., 0].astype(np.uint16 if mode == "I;16" else np.float32) * 257)
    options = {}
    if how == "exif" and format in ("JPEG", "PNG", "WEBP", "TIFF"):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 12))
        options["exif"] = exif
    try:
        data = encoded(image, format, **options)
    except (OSError, ValueError, KeyError):
        data = encoded(image.convert("RGB"), "PNG")
    if how == "truncated":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if how == "flipped":
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return data


CELL = st.one_of(
    st.sampled_from(NAMES + CLASSES + [".", "..", "../../etc/x", "~", "~nobody/x", "/", "", " ", "a,b",
                                       '"', "\\", "\x00", "photos", "./photos", "C:\\photos", "train", "VAL"]),
    st.text(max_size=10),
)


GOOD_HEADERS = [
    ["base_path", "type_dir", "file_name"],
    ["base_path", "type_dir", "file_name", "label"],
    ["base_path", "type_dir", "file_name", "split"],
]
EXTRA_VALUES = {"label": CLASSES + [""], "split": ["", "train", "val", "test", "Validation"]}
BAD_HEADERS = [
    ["base_path", "type_dir", "filename"],
    ["type_dir", "file_name"],
    ["base_path", "type_dir", "file_name", "file_name"],
]


def mostly(draw, usual, unusual, odds: int = 4):
    """``usual`` (a strategy) ``odds`` times out of ``odds + 1``, else ``unusual``.

    The unusual branch is the largest draw, since Hypothesis favours small numbers.
    """
    return draw(unusual if draw(st.integers(0, odds)) == odds else usual)


@st.composite
def manifests(draw) -> tuple[str, str, str]:
    """``(text, encoding, delimiter)`` of a manifest: mostly well formed, with odd rows and files."""
    columns = mostly(draw, st.sampled_from(GOOD_HEADERS), st.sampled_from(BAD_HEADERS))
    delimiter = mostly(draw, st.just(","), st.sampled_from([";", "\t", "|", " "]), odds=2)
    rows = []
    for _ in range(mostly(draw, st.integers(1, 8), st.just(0), odds=10)):
        kind = draw(st.integers(0, 9))
        if kind < 7:  # a row that points at a real file, with a class or split value
            row = ["photos", draw(st.sampled_from(CLASSES)), draw(st.sampled_from(NAMES))]
            row += [draw(st.sampled_from(EXTRA_VALUES.get(column, [""]))) for column in columns[3:]]
        elif kind < 9:  # odd values in the right number of cells
            row = [draw(CELL) for _ in columns]
        else:  # a broken row
            row = [draw(CELL) for _ in range(len(columns) + draw(st.sampled_from([-1, 1])))]
        rows.append(row)
    if rows and draw(st.integers(0, 3)) == 3:
        rows.append(list(rows[0]))  # a duplicate
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
    writer.writerow(columns)
    for row in rows:
        writer.writerow(row)
        if draw(st.integers(0, 5)) == 5:
            buffer.write(draw(st.sampled_from(["\n", delimiter * 2 + "\n", "   \n"])))
    text = buffer.getvalue()
    if draw(st.integers(0, 15)) == 15:
        text = text[: draw(st.integers(0, len(text)))]
    encoding = mostly(draw, st.just("utf-8"), st.sampled_from(["utf-8-sig", "cp932", "latin-1", "utf-16"]))
    return text, encoding, delimiter


def write_case(folder: Path, files: list[bytes], manifest: tuple[str, str, str]) -> Path:
    """``folder/photos/<class>/<name>`` for every name (the same bytes in both classes) and the manifest."""
    for name, data in zip(NAMES, files):
        for class_name in CLASSES:
            path = folder / "photos" / class_name / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    text, encoding, _ = manifest
    path = folder / "list.csv"
    path.write_bytes(text.encode(encoding, errors="replace"))
    return path


def outputs_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def small_images(monkeypatch):
    """Keep decoded sizes small so a mutated header claiming megapixels is refused, not decoded."""
    monkeypatch.setenv("VITKIT_MAX_IMAGE_PIXELS", "250000")


@fuzz(200)
@given(files=st.lists(image_files(), min_size=len(NAMES), max_size=len(NAMES)), manifest=manifests(),
       policy=st.sampled_from(["skip", "error"]))
def test_loading_a_manifest_raises_only_vitkit_errors(files, manifest, policy):
    with tempfile.TemporaryDirectory() as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = Path(temporary)
        path = write_case(folder, files, manifest)
        try:
            images = load_images(path, (16, 16), on_bad_image=policy, cache_dir=folder / "cache", progress=False)
        except VitkitError as error:
            event(f"load: {type(error).__name__}: {str(error).split(': ')[-1][:40]}")
        else:
            event(f"load: {len(images)} images, {len(images.skipped)} skipped")
            pixels = images.all_pixels()
            assert pixels.shape == (len(images), 16, 16, 3) and pixels.dtype == np.uint8
            assert images.labels is None or len(images.labels) == len(images)
            assert len(images) >= 1
            if policy == "error":
                assert not images.skipped
        try:
            problems = check_manifest(path)
        except VitkitError:
            pass
        else:
            assert all(problem.line >= 0 and problem.message for problem in problems)


@pytest.fixture(scope="module")
def model():
    from vitkit.models.classifier import build_model

    return build_model(CLASSES, backbone=dict(TINY_BACKBONE), image_size=32)


@fuzz(40)
@given(files=st.lists(image_files(), min_size=len(NAMES), max_size=len(NAMES)), manifest=manifests(),
       policy=st.sampled_from(["skip", "error"]))
def test_predict_writes_complete_outputs_or_nothing(model, files, manifest, policy):
    from vitkit.prediction import predict

    with tempfile.TemporaryDirectory() as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = Path(temporary)
        path = write_case(folder, files, manifest)
        out = folder / "out"
        try:
            table = predict(model, path, out=out / "predictions.csv", grid=out / "grid.png",
                            on_bad_image=policy, cache_dir=folder / "cache", progress=False)
        except VitkitError as error:
            event(f"predict: {type(error).__name__}")
            assert not out.exists() or outputs_in(out) == []
            return
        event(f"predict: {len(table)} rows")
        written = outputs_in(out)
        assert not [name for name in written if name.startswith(".") or ".tmp" in name]
        with open(out / "predictions.csv", newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
        assert len(rows) == len(table) >= 1
        assert [row["image"] for row in rows] == list(table["image"])
        assert "grid.png" in written and (out / "grid.png").read_bytes()[:4] == b"\x89PNG"


@fuzz(20)
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6))
def test_damaged_model_files_raise_only_weights_errors(model, cut, flips, tmp_path_factory):
    from vitkit.errors import WeightsError
    from vitkit.models.modelfile import load_model, save_model

    folder = tmp_path_factory.mktemp("damaged")
    data = bytearray(save_model(model, folder / "m.weights.h5").read_bytes())
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    damaged = folder / "d.weights.h5"
    damaged.write_bytes(bytes(data[: max(int(cut * len(data)), 0)] if cut < 1 else data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            loaded = load_model(damaged)
        except WeightsError:
            return
    assert loaded.class_names == CLASSES  # only when the damage missed everything that matters


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=300))
def test_file_names_made_from_image_names_stay_in_their_folder(name, tmp_path_factory):
    stem = safe_file_stem(name)
    assert stem and not stem.startswith(".") and "/" not in stem and "\\" not in stem and "\x00" not in stem
    assert stem not in (".", "..") and len(stem.encode("utf-8")) <= 120
    folder = tmp_path_factory.getbasetemp() / "names"
    folder.mkdir(exist_ok=True)
    target = folder / f"{stem}.png"
    assert target.resolve().parent == folder.resolve()
    target.write_bytes(b"")  # a real file system accepts it
    target.unlink()


@pytest.mark.parametrize("name,expected", [
    ("../../etc/x", "etc_x"), ("/etc/passwd", "etc_passwd"), ("..", "image"), ("", "image"),
    ("C:\\Users\\me\\photo 1.jpg", "C_Users_me_photo_1.jpg"), ("写真/猫.png", "写真_猫.png"),
])
def test_known_hostile_names(name, expected):
    assert safe_file_stem(name) == expected
