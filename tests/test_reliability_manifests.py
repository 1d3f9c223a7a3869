"""Awkward manifests: read right, or refused with a message naming the file, the line and the fix."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vitkit.data.imageset import load_images
from vitkit.errors import ManifestError
from vitkit.data.manifest import check_manifest, read_manifest
from vitkit.data.manifestbuild import build_manifests, stratified_split

HEADER = "base_path,type_dir,file_name"


@pytest.fixture
def photos(tmp_path) -> Path:
    """``tmp/photos/{circle,square}/{0,1}.png``, flat colours."""
    for name, colour in (("circle", (200, 0, 0)), ("square", (0, 0, 200))):
        folder = tmp_path / "photos" / name
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), colour).save(folder / f"{i}.png")
    return tmp_path / "photos"


def manifest(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# Structure ---------------------------------------------------------------------------------------

def test_missing_column_is_named(tmp_path):
    path = manifest(tmp_path / "m.csv", "base_path,type_dir\n.,circle\n")
    with pytest.raises(ManifestError, match=r"m\.csv: the header must contain .*missing: file_name"):
        read_manifest(path)


def test_misspelled_column_gets_a_suggestion(tmp_path):
    path = manifest(tmp_path / "m.csv", "base_path,typedir,filename\n.,circle,0.png\n")
    with pytest.raises(ManifestError, match=r"type_dir \(found 'typedir'\?\), file_name \(found 'filename'\?\)"):
        read_manifest(path)


def test_empty_file(tmp_path):
    for content in (b"", b"\n\n  \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"):
        path = tmp_path / "m.csv"
        path.write_bytes(content)
        with pytest.raises(ManifestError, match=r"m\.csv: empty file; a manifest starts with the header"):
            read_manifest(path)


def test_header_only(tmp_path):
    path = manifest(tmp_path / "m.csv", HEADER + "\n\n")
    with pytest.raises(ManifestError, match="has a header but no rows"):
        read_manifest(path)


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters_are_recognised(photos, delimiter):
    path = manifest(photos / "m.csv", f"{HEADER}\n.,circle,0.png\n".replace(",", delimiter))
    assert read_manifest(path).paths == [photos / "circle" / "0.png"]


def test_wrong_delimiter_is_explained(tmp_path):
    path = manifest(tmp_path / "m.csv", "base_path type_dir file_name\n. circle 0.png\n")
    with pytest.raises(ManifestError, match=r"header must contain base_path,type_dir,file_name.*First line: 'base_path type_dir file_name'"):
        read_manifest(path)


def test_quoted_header_and_quoted_names_with_the_delimiter(photos):
    (photos / "circle" / "0.png").rename(photos / "circle" / "red, round.png")
    path = manifest(photos / "m.csv", '"base_path","type_dir","file_name"\n".","circle","red, round.png"\n')
    assert read_manifest(path).paths == [photos / "circle" / "red, round.png"]


def test_unquoted_name_with_the_delimiter_names_the_line(tmp_path):
    path = manifest(tmp_path / "m.csv", f"{HEADER}\n.,circle,0.png\n.,circle,red, round.png\n")
    with pytest.raises(ManifestError, match=r"m\.csv line 3: 4 fields, the header has 3; quote file names"):
        read_manifest(path)


def test_byte_order_mark(photos):
    path = manifest(photos / "m.csv", f"{HEADER}\n.,circle,0.png\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    entries = read_manifest(path).entries
    assert entries[0].path == photos / "circle" / "0.png" and entries[0].label == "circle"


@pytest.mark.parametrize("encoding", ["utf-8", "cp932"])
def test_japanese_names_in_utf8_and_shift_jis(tmp_path, encoding):
    folder = tmp_path / "写真" / "丸い"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "画像１.png")
    path = manifest(tmp_path / "写真" / "一覧.csv", f"{HEADER}\n.,丸い,画像１.png\n", encoding)
    images = load_images(path, (4, 4), progress=False)
    assert images.labels == ["丸い"] and images.names == [str(folder / "画像１.png")]
    assert (images.all_pixels() == (1, 2, 3)).all()


def test_text_in_an_unknown_encoding_is_refused(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(f"{HEADER}\n.,caf\xe9,\xe9t\xe9.png\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8 or Shift-JIS text; save it as UTF-8 or pass --encoding"):
        read_manifest(path)
    assert read_manifest(path, encoding="latin-1").labels == ["café"]


def test_blank_rows_are_ignored_and_line_numbers_stay_true(tmp_path):
    path = manifest(tmp_path / "m.csv", f"\n{HEADER}\n\n.,a,0.png\n , , \n\n.,a,1.png,extra\n")
    with pytest.raises(ManifestError, match=r"m\.csv line 7: 4 fields"):
        read_manifest(path)
    path = manifest(tmp_path / "m.csv", f"{HEADER}\n\n.,a,0.png\n,,\n.,b,1.png\n")
    assert [entry.line for entry in read_manifest(path).entries] == [3, 5]


def test_duplicate_rows_are_kept_once_with_a_warning(tmp_path):
    path = manifest(tmp_path / "m.csv", f"{HEADER}\n.,a,0.png\n.,a,1.png\n.,a,0.png\n./,a,0.png\n")
    with pytest.warns(UserWarning, match=r"duplicate rows ignored \(lines 4, 5\)"):
        assert len(read_manifest(path)) == 2


def test_duplicate_rows_with_different_classes_are_an_error(tmp_path):
    path = manifest(tmp_path / "m.csv", f"{HEADER},label\n.,a,0.png,cat\n.,a,0.png,dog\n")
    with pytest.raises(ManifestError, match=r"line 3: .*0\.png is also on line 2 with another class"):
        read_manifest(path)


def test_csv_damage_is_a_manifest_error(tmp_path):
    path = manifest(tmp_path / "m.csv", f'{HEADER}\n.,a,"{"x" * 200_000}"\n')
    with pytest.raises(ManifestError, match=r"m\.csv line \d+: not valid CSV"):
        read_manifest(path)
    path = manifest(tmp_path / "n.csv", f"{HEADER}\n.,a,0\x00.png\n")
    with pytest.raises(ManifestError, match="line 2: contains a NUL character"):
        read_manifest(path)


def test_large_manifests_are_read_whole_and_errors_name_the_row(tmp_path):
    rows = "".join(f"photos,a,{i:06d}.png\n" for i in range(50_000))  # more than one block of decoding
    path = tmp_path / "m.csv"
    path.write_bytes(f"{HEADER}\n{rows}".encode() + ".,丸い,画像.png\n".encode("cp932"))
    read = read_manifest(path)
    assert len(read) == 50_001 and read.labels[-1] == "丸い" and read.where(-1).endswith("m.csv line 50002")
    splits = ["train"] * 40_000
    splits[39_000] = "someday"
    path = manifest(tmp_path / "split.csv", f"{HEADER},split\n" + "".join(
        f"photos,a,{i:06d}.png,{split}\n" for i, split in enumerate(splits)))
    with pytest.raises(ManifestError, match=r"split\.csv line 39002: split 'someday' is not one of train, val, test"):
        read_manifest(path)


def test_a_folder_given_as_manifest(tmp_path):
    (tmp_path / "m.csv").mkdir()
    with pytest.raises(ManifestError, match="is a folder; give a manifest CSV file"):
        read_manifest(tmp_path / "m.csv")


# Classes ---------------------------------------------------------------------------------------

def test_class_with_one_image_stays_in_training_and_is_explained(tmp_path):
    splits = stratified_split(["a"] * 10 + ["lonely"], 0.2, 0.2, seed=0)
    assert splits[-1] == "train"
    assert Counter(splits[:10]) == {"train": 6, "val": 2, "test": 2}
    photos = tmp_path / "photos"
    for name, count in (("a", 10), ("lonely", 1)):
        (photos / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8)).save(photos / name / f"{i}.png")
    with pytest.warns(UserWarning, match=r"class 'lonely' has 1 image\(s\): too few for val and test splits"):
        summary = build_manifests(photos, tmp_path / "lists", 0.2, 0.2)
    assert summary["train"]["lonely"] == 1 and summary["val"]["lonely"] == 0


def test_unknown_class_at_evaluate_is_an_error(photos, tiny_model):
    from vitkit.evaluation import evaluate

    model = tiny_model(classes=("circle", "triangle"))
    path = manifest(photos / "m.csv", f"{HEADER}\n.,circle,0.png\n.,square,0.png\n")
    with pytest.raises(ManifestError, match=r"\['square'\] are not among the model's classes \['circle', 'triangle'\]"):
        evaluate(model, path)


def test_unknown_class_at_predict_is_predicted_with_a_warning(photos, tiny_model, tmp_path):
    from vitkit.prediction import predict

    model = tiny_model(classes=("circle", "triangle"))
    path = manifest(photos / "m.csv", f"{HEADER}\n.,circle,0.png\n.,square,0.png\n")
    with pytest.warns(UserWarning, match=r"\['square'\] of the input are not among the model's classes"):
        table = predict(model, path, out=tmp_path / "p.csv")
    assert table["true"].tolist() == ["circle", "square"] and not table["correct"][1]
    assert set(table["predicted"]) <= {"circle", "triangle"}


def test_rows_without_a_class_are_named_before_training_refuses(photos, tmp_path):
    from vitkit.training.train import train

    path = manifest(photos / "m.csv", f"{HEADER},label\n.,circle,0.png,circle\n.,square,0.png,\n.,square,1.png,square\n")
    with pytest.warns(UserWarning, match=r"m\.csv line 3: 1 row\(s\) have an empty class"):
        with pytest.raises(ManifestError, match="training images need a class each"):
            train(path, out=tmp_path / "m.weights.h5", backbone="vit_micro", weights="none", image_size=32)


def test_class_outside_the_given_list_names_the_line(tmp_path):
    path = manifest(tmp_path / "m.csv", f"{HEADER}\n.,a,0.png\n.,b,1.png\n")
    with pytest.raises(ManifestError, match=r"line 3: class 'b' is not one of a, c"):
        read_manifest(path, classes=["a", "c"])


# Base paths ------------------------------------------------------------------------------------

def test_relative_base_path_starts_at_the_manifest_folder_not_the_working_folder(photos, tmp_path, monkeypatch):
    lists = tmp_path / "lists" / "deep"
    lists.mkdir(parents=True)
    path = manifest(lists / "m.csv", f"{HEADER}\n../../photos,circle,0.png\n")
    monkeypatch.chdir(photos / "square")
    images = load_images(path, (4, 4), progress=False)
    assert images.names == [str(photos / "circle" / "0.png")]
    assert (images.all_pixels() == (200, 0, 0)).all()


def test_absolute_base_path(photos, tmp_path):
    path = manifest(tmp_path / "elsewhere.csv", f"{HEADER}\n{photos},square,1.png\n")
    images = load_images(path, (4, 4), progress=False)
    assert (images.all_pixels() == (0, 0, 200)).all()


def test_root_replaces_the_manifest_folder(photos, tmp_path):
    path = manifest(tmp_path / "m.csv", f"{HEADER}\n.,circle,0.png\n")
    assert read_manifest(path, root=photos).paths == [photos / "./circle/0.png"]


def test_windows_separators_in_folders(photos):
    path = manifest(photos.parent / "m.csv", f"{HEADER}\nphotos,circle\\..\\square,1.png\n")
    images = load_images(path, (4, 4), progress=False)
    assert (images.all_pixels() == (0, 0, 200)).all()


def test_missing_base_path_folder_lists_the_rows(tmp_path):
    path = manifest(tmp_path / "m.csv", f"{HEADER}\n/no/such/folder,a,0.png\n~nosuchuser/x,a,1.png\n")
    assert read_manifest(path).paths[1] == tmp_path / "~nosuchuser/x/a/1.png"  # kept literal
    problems = check_manifest(path)
    assert [(p.line, "file not found" in p.message) for p in problems] == [(2, True), (3, True)]


def test_pixel_csv_with_ragged_rows(tmp_path):
    path = tmp_path / "digits.csv"
    path.write_text("label,pixel0,pixel1,pixel2,pixel3\n1,0,0,0,0\n2,0,0,0,0,9,9\n")
    with pytest.raises(ManifestError, match=r"digits\.csv: cannot be read as a pixel CSV"):
        load_images(path, (4, 4))
    path.write_text("label,pixel0,pixel1,pixel2,pixel3\n")
    with pytest.raises(ManifestError, match="has a header but no rows"):
        load_images(path, (4, 4))
