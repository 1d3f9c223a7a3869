"""Training: the loss goes down, the outputs land beside the model, options are honoured."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest

import vitkit
from vitkit.errors import ConfigError, ManifestError, OutputExistsError

from conftest import TINY_BACKBONE

# The plain recipe: these tests are about training mechanics, not the small-data recipe's options.
FAST = dict(recipe="plain", backbone="vit_micro", weights="none", image_size=32, batch_size=10, verbose=0, augment=False,
            **{k: TINY_BACKBONE[k] for k in ("patch_size", "num_layers", "hidden_size", "num_heads", "mlp_dim")})


def test_training_lowers_the_loss_and_writes_its_outputs(shape_arrays, tmp_path):
    result = vitkit.train(shape_arrays, out=tmp_path / "models" / "shapes.weights.h5", epochs=6,
                          learning_rate=3e-3, optimizer="adamw", val_fraction=0.2, patience=0, **FAST)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert len(result.history) == 6 and result.best_epoch is not None
    assert result.history[result.best_epoch - 1]["val_loss"] == min(r["val_loss"] for r in result.history)
    for path in (result.model_path, result.history_path, result.curves_path):
        assert path.is_file() and path.stat().st_size > 0
    assert not (tmp_path / "models" / "shapes.run").exists()
    with open(result.history_path) as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    loaded = vitkit.load_model(result.model_path)
    x = shape_arrays[0][:6]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-6)


def test_class_names_are_sorted_unless_given(shape_arrays, tmp_path):
    result = vitkit.train(shape_arrays, out=tmp_path / "a.weights.h5", epochs=1, **FAST)
    assert result.model.class_names == ["circle", "square", "triangle"]
    ordered = vitkit.train(shape_arrays, out=tmp_path / "b.weights.h5", epochs=1,
                           classes=["triangle", "circle", "square"], **FAST)
    assert vitkit.load_model(ordered.model_path).class_names == ["triangle", "circle", "square"]


def test_manifest_split_column_gives_the_validation_set(photo_tree, tmp_path):
    rows = ["base_path,type_dir,file_name,split"]
    for i, image in enumerate(sorted(photo_tree.rglob("*.png"))):
        rows.append(f"{photo_tree},{image.parent.name},{image.name},{'val' if i % 4 == 0 else 'train'}")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    result = vitkit.train(tmp_path / "all.csv", out=tmp_path / "m.weights.h5", epochs=1, cache_dir=tmp_path / "c", **FAST)
    assert "val_loss" in result.history[0]


def test_frozen_backbone_warm_up_leaves_the_backbone_unchanged(shape_arrays, tmp_path):
    keras.utils.set_random_seed(0)  # the initialization train() makes with seed=0
    model = vitkit.build_model(["circle", "square", "triangle"], backbone=dict(TINY_BACKBONE), image_size=32,
                               augment=False, seed=0)
    before = [keras.ops.convert_to_numpy(v) for v in model.backbone.weights]
    result = vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", epochs=1, freeze_backbone_epochs=1,
                          learning_rate=1e-2, **FAST)
    after = [keras.ops.convert_to_numpy(v) for v in result.model.backbone.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    head_before = model.get_layer("head_output").get_weights()[0]
    assert not np.allclose(result.model.get_layer("head_output").get_weights()[0], head_before)


def test_existing_outputs_and_bad_options_are_refused(shape_arrays, tmp_path):
    vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", epochs=1, **FAST)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", epochs=1, **FAST)
    with pytest.raises(ConfigError, match="must end in .weights.h5"):
        vitkit.train(shape_arrays, out=tmp_path / "m.h5", epochs=1, **FAST)
    with pytest.raises(ConfigError, match="optimizer"):
        vitkit.train(shape_arrays, out=tmp_path / "n.weights.h5", optimizer="sgd", **FAST)
    x, y = shape_arrays
    with pytest.raises(ManifestError, match="at least two"):
        vitkit.train((x, np.array(["circle"] * len(x))), out=tmp_path / "o.weights.h5", **FAST)
