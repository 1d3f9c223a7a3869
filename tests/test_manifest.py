"""Manifests: the base_path,type_dir,file_name format, class rules, building and checking."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import vitkit
from vitkit.errors import ManifestError, OutputExistsError
from vitkit.data.manifest import check_manifest, read_manifest
from vitkit.data.manifestbuild import stratified_split
from vitkit.data.textarray import TextArray

from conftest import make_photo_tree


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_columns_are_text_and_paths_join(tmp_path):
    manifest = read_manifest(_write(tmp_path / "m.csv", "base_path,type_dir,file_name\nphotos,007,0001\n"))
    entry = manifest.entries[0]
    assert entry.path == tmp_path / "photos" / "007" / "0001"
    assert entry.label == "007"
    assert entry.line == 2


def test_absolute_and_relative_base_paths(tmp_path):
    text = f"base_path,type_dir,file_name\n{tmp_path / 'abs'},a,x.png\nrel,b,y.png\n"
    manifest = read_manifest(_write(tmp_path / "m.csv", text), root=tmp_path / "elsewhere")
    assert manifest.paths == [tmp_path / "abs" / "a" / "x.png", tmp_path / "elsewhere" / "rel" / "b" / "y.png"]


def test_label_and_split_columns(tmp_path):
    text = ("base_path,type_dir,file_name,label,split\n"
            "p,shelf_1,a.png,good,train\np,shelf_1,b.png,dent,Validation\np,shelf_2,c.png,good,test\n")
    manifest = read_manifest(_write(tmp_path / "m.csv", text))
    assert manifest.labels == ["good", "dent", "good"]
    assert [len(manifest.split(s)) for s in ("train", "val", "test")] == [1, 1, 1]
    by_folder = read_manifest(tmp_path / "m.csv", label_from="type_dir")
    assert by_folder.labels == ["shelf_1", "shelf_1", "shelf_2"]


def test_a_large_manifest_is_kept_as_compact_columns(tmp_path):
    rows = "".join(f"photos,{'ab'[i % 2]},{i:05d}.png,{'xyz'[i % 3]},{('train', 'val')[i % 2]}\n" for i in range(20_000))
    manifest = read_manifest(_write(tmp_path / "m.csv", "base_path,type_dir,file_name,label,split\n" + rows))
    assert isinstance(manifest.files, TextArray)
    assert (manifest.files.data.dtype, manifest.files.ends.dtype) == (np.uint8, np.int64)
    assert (manifest.label_codes.dtype, manifest.split_codes.dtype, manifest.lines.dtype) == (np.int32, np.int8, np.int64)
    assert manifest.files.data.nbytes == sum(len(str(path)) for path in manifest.paths)
    assert manifest.files[12_345] == str(tmp_path / "photos" / "b" / "12345.png")
    assert (manifest.labels[12_345], manifest.lines[12_345], manifest.entries[12_345].split) == ("x", 12_347, "val")
    assert manifest.classes() == ["x", "y", "z"]
    val = manifest.split("val")
    assert len(val) == 10_000 and val.paths[0] == tmp_path / "photos" / "b" / "00001.png" and val.where(0).endswith("line 3")


def test_substring_rule_of_the_original_notebooks(tmp_path):
    text = "base_path,type_dir,file_name\np,2021_bottle_front,a.png\np,can-side-view,b.png\n"
    manifest = read_manifest(_write(tmp_path / "m.csv", text), label_from="substring", classes=["bottle", "can"])
    assert manifest.labels == ["bottle", "can"]


@pytest.mark.parametrize("type_dir, problem", [("mug_top", "matches none"), ("can_bottle", "matches several")])
def test_substring_rule_fails_clearly(tmp_path, type_dir, problem):
    path = _write(tmp_path / "m.csv", f"base_path,type_dir,file_name\np,bottle,a.png\np,{type_dir},b.png\n")
    with pytest.raises(ManifestError, match=rf"line 3: type_dir '{type_dir}' {problem}"):
        read_manifest(path, label_from="substring", classes=["bottle", "can"])


def test_substring_rule_needs_classes(tmp_path):
    path = _write(tmp_path / "m.csv", "base_path,type_dir,file_name\np,bottle,a.png\n")
    with pytest.raises(ManifestError, match="--classes"):
        read_manifest(path, label_from="substring")


def test_build_from_nested_folders(tmp_path):
    photos = make_photo_tree(tmp_path / "photos", per_class=10, classes=("bolt", "nut"))
    nested = photos / "nut" / "batch_2"
    nested.mkdir()
    (photos / "nut" / "nut_00.png").rename(nested / "nut_00.png")
    summary = vitkit.build_manifests(photos, tmp_path / "manifests", val_fraction=0.2, test_fraction=0.2, seed=3)
    assert {split: dict(c) for split, c in summary.items()} == {
        "train": {"bolt": 6, "nut": 6}, "val": {"bolt": 2, "nut": 2}, "test": {"bolt": 2, "nut": 2}}
    rows = [read_manifest(tmp_path / "manifests" / f"{s}.csv") for s in ("train", "val", "test")]
    every = [p for m in rows for p in m.paths]
    assert sorted(every) == sorted(photos.rglob("*.png"))
    assert any(e.path.parent == nested for m in rows for e in m.entries)
    assert all(e.label == e.path.relative_to(photos).parts[0] for m in rows for e in m.entries)


def test_build_is_seeded_and_refuses_to_overwrite(tmp_path):
    photos = make_photo_tree(tmp_path / "photos", per_class=12)
    vitkit.build_manifests(photos, tmp_path / "one", seed=5)
    vitkit.build_manifests(photos, tmp_path / "two", seed=5)
    assert (tmp_path / "one" / "test.csv").read_text() == (tmp_path / "two" / "test.csv").read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        vitkit.build_manifests(photos, tmp_path / "one", seed=6)
    vitkit.build_manifests(photos, tmp_path / "one", seed=6, overwrite=True)
    assert (tmp_path / "one" / "test.csv").read_text() != (tmp_path / "two" / "test.csv").read_text()


def test_stratified_split_keeps_class_shares():
    labels = ["a"] * 50 + ["b"] * 20 + ["c"] * 2
    splits = stratified_split(labels, 0.2, 0.1, seed=0)
    counts = Counter(zip(labels, splits))
    assert (counts["a", "val"], counts["a", "test"], counts["b", "val"], counts["b", "test"]) == (10, 5, 4, 2)
    assert counts["c", "train"] >= 1


def test_check_reports_problems_by_row(tmp_path):
    photos = make_photo_tree(tmp_path / "photos", per_class=2, classes=("a", "b"))
    (photos / "b" / "broken.png").write_bytes(b"not an image")
    text = ("base_path,type_dir,file_name\n"
            "photos,a,a_00.png\nphotos,a,missing.png\nphotos,b,broken.png\nphotos,b,b_00.png\n")
    problems = check_manifest(_write(tmp_path / "m.csv", text))
    assert [(p.line, p.message.split(": ", 1)[1]) for p in problems if p.line] == [
        (3, "file not found"), (4, "not an image format Pillow can read")]


def test_read_manifest_through_the_api(tmp_path):
    path = _write(tmp_path / "m.csv", "base_path,type_dir,file_name\np,a,1.png\np,b,2.png\n")
    assert vitkit.read_manifest(path).classes() == ["a", "b"]
