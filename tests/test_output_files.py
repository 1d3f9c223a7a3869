"""CSV outputs are safe to open in a spreadsheet: text from file and class names that a
spreadsheet would run as a formula is written with a leading ``'``; manifests keep their names.

The photos live in class folders named like formulas (``=SUM(A1)``, ``-neg``, ``+plus``, ``@at``)
and are given as the relative folder ``.``, so every image name starts with its class name too.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import make_photo_tree
from vitkit.data.manifest import read_manifest
from vitkit.data.manifestbuild import build_manifests
from vitkit.evaluation import evaluate
from vitkit.explanation.explain import explain
from vitkit.fileio import spreadsheet_safe
from vitkit.prediction import predict

# OWASP "CSV Injection": the first characters that make a spreadsheet evaluate a cell.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CLASSES = ("=SUM(A1)", "-neg", "+plus", "@at")
BROKEN = "=SUM(A1)/=broken.png"


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.reader(stream))


def column(path: Path, name: str) -> list[str]:
    header, *body = rows_of(path)
    return [row[header.index(name)] for row in body]


def quoted(values) -> list[str]:
    return ["'" + value for value in values]


def assert_no_formula_cells(path: Path) -> None:
    for row in rows_of(path):
        for cell in row:
            assert not cell.startswith(FORMULA_STARTS), f"{path.name}: {cell!r}"


@pytest.fixture
def hostile_photos(tmp_path, monkeypatch) -> Path:
    """``=SUM(A1)/=SUM(A1)_00.png`` ... and an unreadable ``=SUM(A1)/=broken.png``; the working folder."""
    photos = make_photo_tree(tmp_path / "photos", per_class=2, size=32, classes=CLASSES)
    (photos / BROKEN).write_bytes(b"")
    monkeypatch.chdir(photos)
    return photos


@pytest.mark.parametrize("start", FORMULA_STARTS)
def test_text_that_starts_a_formula_gets_a_quote(start):
    assert spreadsheet_safe(f"{start}HYPERLINK(\"http://x\")") == f"'{start}HYPERLINK(\"http://x\")"


@pytest.mark.parametrize("value", ["mug.jpg", "photos/=a.png", "a-b", "", "'=already text", " =spaced", "\n=x",
                                   -1.5, 3, None, True])
def test_other_values_are_unchanged(value):
    assert spreadsheet_safe(value) is value


def test_predictions_and_skipped_list_are_spreadsheet_safe(tiny_model, hostile_photos):
    with pytest.warns(UserWarning, match="skipped 1 of 9"):
        table = predict(tiny_model(CLASSES), ".", out="p.csv")
    assert all(name.startswith(CLASSES) for name in table["image"])  # the API's table keeps the names
    assert column(Path("p.csv"), "image") == quoted(table["image"])
    assert column(Path("p.csv"), "predicted") == quoted(table["predicted"])
    assert column(Path("p.csv"), "true") == quoted(table["true"])
    assert rows_of(Path("p.csv"))[0][-4:] == [f"p_{name}" for name in CLASSES]  # already safe
    assert column(Path("p.skipped.csv"), "image") == ["'" + BROKEN]
    for path in (Path("p.csv"), Path("p.skipped.csv")):
        assert_no_formula_cells(path)


def test_evaluation_tables_are_spreadsheet_safe(tiny_model, hostile_photos):
    with pytest.warns(UserWarning, match="skipped 1 of 9"):
        evaluate(tiny_model(CLASSES), ".", out="report")
    report = Path("report")
    assert rows_of(report / "confusion_matrix.csv")[0] == ["true", *quoted(CLASSES)]
    assert column(report / "confusion_matrix.csv", "true") == quoted(CLASSES)
    assert column(report / "class_probabilities.csv", "true") == quoted(CLASSES)
    assert sorted(column(report / "probabilities.csv", "image")) == sorted(
        "'" + str(path.relative_to(hostile_photos)) for path in hostile_photos.rglob("*_0?.png"))
    assert column(report / "skipped.csv", "image") == ["'" + BROKEN]
    for name in ("confusion_matrix.csv", "class_probabilities.csv", "probabilities.csv", "skipped.csv"):
        assert_no_formula_cells(report / name)


def test_explanation_table_is_spreadsheet_safe(tiny_model, hostile_photos):
    with pytest.warns(UserWarning, match="skipped 1 of 9"):
        result = explain(tiny_model(CLASSES), ".", out="explained", progress=False)
    table = result.table()
    for name in ("image", "predicted", "explained", "true"):
        assert column(Path("explained/explanations.csv"), name) == quoted(table[name])
    for name in ("explanations.csv", "skipped.csv"):
        assert_no_formula_cells(Path("explained") / name)


def test_manifests_keep_their_names_for_vitkit_to_read_back(tmp_path):
    photos = make_photo_tree(tmp_path / "photos", per_class=6, size=32, classes=CLASSES)
    build_manifests(photos, tmp_path / "lists")
    lists = [tmp_path / "lists" / f"{split}.csv" for split in ("train", "val", "test")]
    rows = [row for path in lists for row in csv.DictReader(open(path, newline="", encoding="utf-8"))]
    on_disk = sorted(photos.rglob("*.png"))
    assert sorted((row["type_dir"], row["file_name"]) for row in rows) == [(p.parent.name, p.name) for p in on_disk]
    assert sorted(Path(path) for path in lists for path in read_manifest(path).paths) == on_disk
