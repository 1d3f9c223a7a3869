"""The sample-photo generator in examples/: deterministic, writes matching masks, guards its outputs."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

SCRIPT = ROOT / "examples" / "make_sample_photos.py"


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_sample_photos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def run(generator, folder: Path, *extra: str) -> int:
    return generator.main(["--out", str(folder / "photos"), "--per-class", "2", "--size", "48", *extra])


def files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_same_seed_same_files_other_seed_other_files(generator, tmp_path):
    run(generator, tmp_path / "a", "--seed", "3")
    run(generator, tmp_path / "b", "--seed", "3")
    run(generator, tmp_path / "c", "--seed", "4")
    first, again, other = (files(tmp_path / name) for name in "abc")
    assert len(first) == 16  # 4 classes x 2 photos, each with a mask
    assert first == again
    assert first.keys() == other.keys() and first != other


def test_image_depends_only_on_its_index(generator, tmp_path):
    run(generator, tmp_path / "few")
    generator.main(["--out", str(tmp_path / "more" / "photos"), "--per-class", "3", "--size", "48"])
    few, more = files(tmp_path / "few"), files(tmp_path / "more")
    assert all(more[name] == data for name, data in few.items())


def test_every_photo_has_a_matching_plausible_mask(generator, tmp_path):
    run(generator, tmp_path)
    photos = sorted((tmp_path / "photos").rglob("*.jpg"))
    assert {path.parent.name for path in photos} == set(generator.CLASSES)
    for photo_path in photos:
        assert photo_path.name == f"{photo_path.parent.name}_{photo_path.stem.split('_')[1]}.jpg"
        photo = Image.open(photo_path)
        mask = Image.open(tmp_path / "masks" / photo_path.parent.name / f"{photo_path.stem}.png")
        assert photo.format == "JPEG" and photo.mode == "RGB"
        assert mask.mode == "L" and mask.size == photo.size == (48, 48)
        values = np.asarray(mask)
        assert set(np.unique(values)) <= {0, 255}
        share = (values == 255).mean()
        assert 0.05 < share < 0.7, f"{photo_path.name}: product covers {share:.0%} of the frame"


def test_mask_follows_the_product_not_the_occluder(generator):
    """A photo whose clutter covers part of the product: the mask loses exactly that part."""
    level = generator.DIFFICULTIES["standard"]
    crowded = generator.dataclasses.replace(level, occlusion=1.0, hand=1.0, min_visible=0.3)
    found = False
    for seed in range(20):
        photo, mask = generator.render_photo("can", np.random.default_rng(seed), 48, crowded)
        # The same scene with every occluder refused (none may hide anything): the whole product.
        clear, clear_mask = generator.render_photo("can", np.random.default_rng(seed), 48,
                                                   generator.dataclasses.replace(crowded, min_visible=1.01))
        shown, whole = np.asarray(mask) == 255, np.asarray(clear_mask) == 255
        if shown.sum() < whole.sum() - 10:
            found = True
            assert not (shown & ~whole).any(), "the mask grew where clutter was drawn"
            hidden = whole & ~shown
            change = np.abs(np.asarray(photo, float) - np.asarray(clear, float)).mean(axis=-1)
            assert change[hidden].mean() > 4 * change[shown].mean(), "the cut-out part of the mask was not covered"
            break
    assert found, "no photo in 20 had a product partly covered by clutter"


def test_bundled_photos_are_what_the_script_makes(generator):
    """The committed sample is the script's default output (compared as decoded pixels, allowing
    for JPEG codec and floating-point differences between machines)."""
    level = generator.DIFFICULTIES["standard"]
    for kind in generator.CLASSES:
        for i in (0, level.per_class - 1):
            data, mask = generator.photo_and_mask(kind, i, 0, "standard", level.size)
            name = f"{kind}/{kind}_{i:03d}"
            made = np.asarray(Image.open(io.BytesIO(data)), float)
            bundled = np.asarray(Image.open(ROOT / "examples" / "photos" / f"{name}.jpg"), float)
            assert np.abs(made - bundled).mean() < 1.0, name
            assert (np.asarray(mask) != np.asarray(Image.open(ROOT / "examples" / "masks" / f"{name}.png"))).mean() < 0.01


def test_refuses_to_overwrite_without_flag(generator, tmp_path, capsys):
    run(generator, tmp_path)
    before = files(tmp_path)
    with pytest.raises(SystemExit) as stop:
        run(generator, tmp_path, "--seed", "1")
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert "not empty" in message and "--overwrite" in message
    assert files(tmp_path) == before
    (tmp_path / "photos" / "can" / "notes.txt").write_text("mine")
    assert run(generator, tmp_path, "--seed", "1", "--overwrite") == 0
    after = files(tmp_path)
    assert after["photos/can/notes.txt"] == b"mine"
    assert after.keys() == before.keys() | {"photos/can/notes.txt"} and after != before


def test_refuses_an_existing_mask_folder_too(generator, tmp_path):
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "old.png").write_bytes(b"x")
    with pytest.raises(SystemExit):
        run(generator, tmp_path)
    assert not (tmp_path / "photos").exists() or not any((tmp_path / "photos").iterdir())


@pytest.mark.parametrize("difficulty", ["hard", "severe"])
def test_harder_levels_run_with_their_own_defaults(generator, tmp_path, difficulty):
    generator.main(["--out", str(tmp_path / "photos"), "--per-class", "2", "--difficulty", difficulty])
    photo_paths = sorted((tmp_path / "photos").rglob("*.jpg"))
    assert len(photo_paths) == 8
    assert all(Image.open(path).size == (64, 64) for path in photo_paths)
    assert all(np.asarray(Image.open(tmp_path / "masks" / p.parent.name / f"{p.stem}.png")).any() for p in photo_paths)


def test_severe_products_are_smaller_than_hard_ones(generator, tmp_path):
    """The product's share of the frame (its mask), averaged over 6 photos per class."""
    share = {}
    for difficulty in ("hard", "severe"):
        generator.main(["--out", str(tmp_path / difficulty), "--masks", str(tmp_path / f"{difficulty}_masks"),
                        "--per-class", "6", "--difficulty", difficulty])
        share[difficulty] = np.mean([(np.asarray(Image.open(path)) > 127).mean()
                                     for path in (tmp_path / f"{difficulty}_masks").rglob("*.png")])
    assert share["severe"] < 0.8 * share["hard"], share


def test_help_explains_the_options(generator, capsys):
    with pytest.raises(SystemExit):
        generator.main(["--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--masks", "--per-class", "--size", "--seed", "--difficulty", "--overwrite", "examples:"):
        assert option in text


def test_bundled_manifests_list_every_sample_photo_once_without_problems():
    import pandas as pd

    from vitkit.data.manifest import check_manifest

    folder = ROOT / "data_manifests" / "sample_products"
    listed = []
    for split in ("train", "val", "test"):
        assert check_manifest(folder / f"{split}.csv") == [], split
        rows = pd.read_csv(folder / f"{split}.csv", dtype=str)
        listed += [f"{row.type_dir}/{row.file_name}" for row in rows.itertuples()]
    photos = sorted(str(path.relative_to(ROOT / "examples" / "photos")) for path in
                    (ROOT / "examples" / "photos").glob("*/*.jpg"))
    assert sorted(listed) == photos
