"""Pre-training by masked image modelling: the masks, the loss against NumPy, training lowers it,
the backbone file goes into ``train --weights`` whole, interrupted runs resume, clear errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import textwrap

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

import vitkit
from conftest import TINY_BACKBONE, make_photo_tree, run_commands, run_python, stop_after_the_first_epoch, without_timing
from vitkit.errors import ConfigError, OutputExistsError, WeightsError
from vitkit.models.backbone import VisionTransformer
from vitkit.models.backbonefile import write_backbone_file
from vitkit.models.classifier import build_model
from vitkit.models.config import resolve_config
from vitkit.models.masked import MaskedImageModel, masked_cells
from vitkit.models.posembed import resample_position_embedding
from vitkit.training.datasets import DataSource
from vitkit.training.pretraindata import load_pretraining_images
from vitkit.training.pretrainsettings import resolve_pretrain_settings
from vitkit.training.pretrainstate import PretrainKeeper

TINY = dict(TINY_BACKBONE, image_size=32, batch_size=10, verbose=0)
SMALL_DATA_TINY = resolve_config(dict(TINY_BACKBONE), (32, 32), tokenizer="conv", locality_attention=True)


def tiny_images(count: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def smooth_images(count: int = 60, seed: int = 0) -> np.ndarray:
    """32 px images of smooth colour gradients (4x4 random colours upsampled), whose hidden
    patches their neighbours tell."""
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((32, 32)))
                     for _ in range(count)])


def numpy_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """Patch ``r * cols + c`` is ``images[:, r*P:(r+1)*P, c*P:(c+1)*P, :]`` flattened."""
    rows, cols = images.shape[1] // patch, images.shape[2] // patch
    return np.stack([images[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch, :].reshape(len(images), -1)
                     for r in range(rows) for c in range(cols)], axis=1)


def file_arrays(path) -> list[np.ndarray]:
    with h5py.File(path, "r") as handle:
        return [handle["backbone"][name][()] for name in sorted(handle["backbone"])]


def backbone_file(path, config=SMALL_DATA_TINY, image_size=(32, 32)):
    """A backbone file of a freshly built (random) backbone, as ``vitkit pretrain`` writes it."""
    backbone = VisionTransformer(**config.to_dict(), name="vit")
    backbone.build((None, *image_size, 3))
    write_backbone_file(backbone, path, {"image_size": list(image_size), "preprocess": "tf",
                                         "resize_mode": "stretch", "interpolation": "bilinear"})
    return backbone


# The mask and the loss --------------------------------------------------------------------------

@pytest.mark.parametrize("ratio, mask_patch", [(0.6, 8), (0.4, 8), (0.5, 16)])
def test_masks_hide_the_requested_share_and_the_hidden_pixels_are_zero(ratio, mask_patch):
    model = MaskedImageModel(SMALL_DATA_TINY, (32, 32), mask_ratio=ratio, mask_patch_size=mask_patch, seed=3)
    images = tiny_images(8)
    scaled, masked, mask = (keras.ops.convert_to_numpy(t) for t in model.masked_inputs(images, training=True))
    cells = (32 // mask_patch) ** 2
    assert mask.shape == (8, 32 // mask_patch, 32 // mask_patch)
    assert (mask.reshape(8, -1).sum(axis=1) == masked_cells(ratio, cells)).all()
    pixels = np.kron(mask, np.ones((mask_patch, mask_patch)))[..., None].repeat(3, axis=-1).astype(bool)
    np.testing.assert_array_equal(masked[pixels], 0.0)
    np.testing.assert_allclose(masked[~pixels], (images / 127.5 - 1.0)[~pixels], atol=1e-6)
    np.testing.assert_allclose(scaled, images / 127.5 - 1.0, atol=1e-6)  # augmentation off by default
    assert len({mask[i].tobytes() for i in range(8)}) > 1  # drawn per image

    again = MaskedImageModel(SMALL_DATA_TINY, (32, 32), mask_ratio=ratio, mask_patch_size=mask_patch, seed=3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again.masked_inputs(images)[2]), mask)


@pytest.mark.parametrize("loss, normalize", [("l1", True), ("mse", False)])
def test_loss_is_the_mean_error_over_hidden_patches(loss, normalize):
    model = MaskedImageModel(SMALL_DATA_TINY, (32, 32), loss=loss, normalize_target=normalize, seed=0)
    images = tiny_images(4)
    mask = np.zeros((4, 4, 4), dtype=np.float32)
    mask[0, 0, :] = mask[1, :, 2] = mask[2, 1:3, 1:3] = 1.0
    mask[3] = np.eye(4)
    scaled = (images / 127.5 - 1.0).astype(np.float32)
    masked = scaled * (1.0 - np.kron(mask, np.ones((8, 8)))[..., None])
    out = model.reconstruct(scaled, masked, mask)
    value = float(keras.ops.convert_to_numpy(model.compute_loss(y_pred=out)))

    prediction = keras.ops.convert_to_numpy(out["prediction"])
    expected = keras.ops.convert_to_numpy(model.decoder(model.backbone.encode(masked)[:, 1:]))
    np.testing.assert_allclose(prediction, expected, atol=1e-5)
    target = numpy_patches(scaled, 8).astype(np.float64)
    if normalize:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
    error = np.abs(prediction - target) if loss == "l1" else (prediction - target) ** 2
    per_patch, hidden = error.mean(-1), mask.reshape(4, -1)
    reference = np.mean((per_patch * hidden).sum(1) / hidden.sum(1))
    assert value == pytest.approx(reference, rel=1e-5)


def test_settings_refuse_masks_that_do_not_fit():
    with pytest.raises(ConfigError, match="mask ratio"):
        resolve_pretrain_settings(mask_ratio=1.0, **TINY_BACKBONE)
    with pytest.raises(ConfigError, match="multiple of the patch size 8"):
        resolve_pretrain_settings(mask_patch_size=12, **TINY_BACKBONE)
    with pytest.raises(ConfigError, match="unknown backbone option"):
        resolve_pretrain_settings(heads=4)
    settings = resolve_pretrain_settings(epochs=20)
    assert (settings.architecture.tokenizer, settings.architecture.locality_attention) == ("conv", True)
    assert settings.warmup_epochs == 4 and settings.image_size == (32, 32)


# Images -----------------------------------------------------------------------------------------

def test_a_manifest_without_classes_and_extra_folders_are_read_without_its_test_rows(tmp_path):
    photos = make_photo_tree(tmp_path / "photos", per_class=2, size=32)
    extra = make_photo_tree(tmp_path / "extra", per_class=1, size=32)
    files = sorted(photos.rglob("*.png"))
    rows = ["base_path,type_dir,file_name,label,split"]
    rows += [f"{photos},{f.parent.name},{f.name},,{'test' if i < 2 else 'train'}" for i, f in enumerate(files)]
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    settings = resolve_pretrain_settings(**TINY_BACKBONE)
    images = load_pretraining_images(tmp_path / "all.csv", [extra], settings, DataSource(cache_dir=tmp_path / "c"))
    assert len(images) == len(files) - 2 + 3 and images.labels is None
    assert images.all_pixels().shape == (len(images), 32, 32, 3)
    assert str(files[0]) not in list(images.names)


# Pre-training, the backbone file, fine-tuning from it -------------------------------------------

def test_pretraining_lowers_the_loss_and_writes_a_backbone_file_that_builds_its_classifier(tmp_path):
    out = tmp_path / "models" / "shapes.backbone.weights.h5"
    # Raw pixels as the target: a few epochs learn them from the neighbours (normalized patches take longer).
    result = vitkit.pretrain(smooth_images(), out=out, epochs=6, learning_rate=3e-3, normalize_target=False, **TINY)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    with open(result.history_path) as stream:
        assert [int(row["epoch"]) for row in csv.DictReader(stream)] == list(range(1, 7))
    assert result.history_path.name == "shapes.backbone.history.csv"  # apart from train's shapes.history.csv
    assert not (tmp_path / "models" / "shapes.backbone.run").exists()
    metadata = json.loads(h5py.File(out, "r").attrs["vitkit"])
    assert metadata["format"] == "vitkit-backbone" and metadata["epochs_done"] == 6
    assert metadata["pretraining"]["mask_ratio"] == 0.6 and metadata["images"] == 60

    saved = file_arrays(out)
    model = build_model(["circle", "square", "triangle"], weights=str(out))
    assert (model.backbone.config.tokenizer, model.backbone.config.locality_attention) == ("conv", True)
    assert model.spec.image_size == (32, 32) and model.spec.preprocess == "tf"
    loaded = [keras.ops.convert_to_numpy(w) for w in model.backbone.weights]
    assert len(loaded) == len(saved)
    for a, b in zip(loaded, saved):
        np.testing.assert_array_equal(a, b)



def test_train_takes_the_architecture_from_a_backbone_file_at_any_image_size(shape_arrays, tmp_path):
    out = tmp_path / "p.backbone.weights.h5"
    written = backbone_file(out)
    saved = file_arrays(out)
    index = next(i for i, w in enumerate(written.weights) if w.path.endswith("pos_embedding"))
    bigger = build_model(["a", "b"], weights=str(out), image_size=48)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bigger.backbone.weights[index]),
                               resample_position_embedding(saved[index], (6, 6), 1, "bilinear"), atol=1e-6)
    # The small-data recipe's tokenizer and attention are the file's; its other options apply.
    tuned = vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", weights=str(out), recipe="small-data",
                         epochs=1, batch_size=10, verbose=0)
    assert tuned.model.spec.backbone == dataclasses.replace(SMALL_DATA_TINY, drop_path=0.1)
    assert tuned.model.spec.image_size == (32, 32)
    plain = vitkit.train(shape_arrays, out=tmp_path / "n.weights.h5", weights=str(out), epochs=1, batch_size=10,
                         verbose=0, augment=False)
    assert plain.recipe == "plain" and plain.model.spec.backbone == SMALL_DATA_TINY


@pytest.mark.slow
def test_an_interrupted_pretraining_resumes_to_the_uninterrupted_result(shape_arrays, tmp_path, monkeypatch):
    options = dict(TINY, epochs=2, seed=2, dropout=0.1)
    whole = vitkit.pretrain(shape_arrays[0], out=tmp_path / "a.backbone.weights.h5", **options)

    stop_after_the_first_epoch(monkeypatch, PretrainKeeper)
    out = tmp_path / "b.backbone.weights.h5"
    with pytest.raises(KeyboardInterrupt, match="continue it with --resume"):
        vitkit.pretrain(shape_arrays[0], out=out, **options)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="holds an interrupted run"):
        vitkit.pretrain(shape_arrays[0], out=out, **options)
    with pytest.raises(ConfigError, match="other options.*epochs"):
        vitkit.pretrain(shape_arrays[0], out=out, resume=True, **{**options, "epochs": 3})
    resumed = vitkit.pretrain(shape_arrays[0], out=out, resume=True, **options)

    assert without_timing(resumed.history) == without_timing(whole.history)
    for a, b in zip(file_arrays(out), file_arrays(whole.backbone_path)):
        np.testing.assert_array_equal(a, b)
    assert not (tmp_path / "b.backbone.run").exists()
    with pytest.raises(OutputExistsError):
        vitkit.pretrain(shape_arrays[0], out=out, **options)


# Errors -------------------------------------------------------------------------------------------

def test_weights_that_are_not_a_backbone_file_say_what_to_give(tiny_model, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build_model(["a", "b"], weights=str(tmp_path / "missing.backbone.weights.h5"))
    classifier = tmp_path / "classifier.weights.h5"
    vitkit.save_model(tiny_model(), classifier)
    with pytest.raises(WeightsError, match="is a trained classifier.*vitkit pretrain"):
        build_model(["a", "b"], weights=str(classifier))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(WeightsError, match="not a vitkit backbone file"):
        build_model(["a", "b"], weights=str(other))
    backbone = tmp_path / "b.backbone.weights.h5"
    backbone_file(backbone)
    with pytest.raises(WeightsError, match="is a pre-trained backbone.*vitkit train DATA --weights"):
        vitkit.load_model(backbone)
    with pytest.raises(ConfigError, match="has tokenizer conv; drop the option that sets patch"):
        build_model(["a", "b"], weights=str(backbone), tokenizer="patch")
    with pytest.raises(ConfigError, match="has num layers 2"):
        build_model(["a", "b"], weights=str(backbone), num_layers=3)


def test_pretrain_command_line_errors(cli, tmp_path):
    photos = make_photo_tree(tmp_path / "photos", per_class=2, size=32)
    status, _, stderr = cli("pretrain", photos, "--out", tmp_path / "x.weights.h5")
    assert status == 2 and "must end in .backbone.weights.h5" in stderr
    status, _, stderr = cli("pretrain", photos, "--out", tmp_path / "x.backbone.weights.h5", "--mask-ratio", "1.5")
    assert status == 2 and "mask ratio must be between 0 and 1" in stderr
    (tmp_path / "x.backbone.weights.h5").write_bytes(b"")
    status, _, stderr = cli("pretrain", photos, "--out", tmp_path / "x.backbone.weights.h5")
    assert status == 2 and "exists; pass --overwrite" in stderr
    status, _, stderr = cli("train", photos, "--weights", tmp_path / "x.backbone.weights.h5",
                            "--out", tmp_path / "m.weights.h5")
    assert status == 2 and "not a checkpoint vitkit reads" in stderr and "backbone.weights.h5 of `vitkit pretrain`" in stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", [[], ["--method", "dino", "--prototypes", "32", "--local-crops", "2"]],
                         ids=["simmim", "dino"])
def test_pretrain_then_train_on_jax(photo_tree, tmp_path, method):
    backbone = tmp_path / "p.backbone.weights.h5"
    tiny = ["--patch-size", "8", "--layers", "2", "--hidden-size", "32", "--heads", "4", "--mlp-dim", "64",
            "--image-size", "32", "--batch-size", "8", "--cache-dir", tmp_path / "cache"]
    results, stderr = run_commands([
        ["pretrain", photo_tree, "--out", backbone, "--epochs", "2", *method, *tiny],
        ["train", photo_tree, "--weights", backbone, "--out", tmp_path / "m.weights.h5", "--epochs", "1",
         "--batch-size", "8", "--cache-dir", tmp_path / "cache"],
    ], backend="jax")
    assert [status for status, _ in results] == [0, 0], stderr[-2000:]
    assert "pre-trained on 24 images, 2 epochs" in results[0][1] and "next:     vitkit train" in results[0][1]
    recorded = json.loads(h5py.File(backbone, "r").attrs["vitkit"])["pretraining"]["method"]
    assert recorded == ("dino" if method else "simmim")
    model = vitkit.load_model(tmp_path / "m.weights.h5")
    assert model.spec.backbone.tokenizer == "conv" and model.spec.backbone.locality_attention


@pytest.mark.slow
def test_pretraining_on_two_devices_writes_a_backbone_file():
    code = textwrap.dedent(f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import pathlib, tempfile
        import numpy as np
        import vitkit
        x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
        out = pathlib.Path(tempfile.mkdtemp()) / "m.backbone.weights.h5"
        result = vitkit.pretrain(x, out=out, epochs=2, batch_size=8, image_size=32, verbose=0, devices=2,
                                 **{TINY_BACKBONE!r})
        model = vitkit.build_model(["a", "b"], weights=str(out))
        print("RESULT", len(result.history), np.isfinite(result.history[-1]["loss"]), model.backbone.config.tokenizer)
    """)
    done = run_python(code, backend="jax")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RESULT 2 True conv" in done.stdout


def test_distillation_adds_its_token_to_a_pretrained_backbone(shape_arrays, tmp_path):
    out = tmp_path / "p.backbone.weights.h5"
    written = backbone_file(out)
    saved = {w.path: a for w, a in zip(written.weights, file_arrays(out))}
    model = build_model(["a", "b", "c"], weights=str(out), distillation_token=True)
    loaded = {w.path: keras.ops.convert_to_numpy(w) for w in model.backbone.weights}
    assert set(loaded) - set(saved) == {next(p for p in loaded if "dist_token" in p)}
    for path, value in saved.items():
        if path.endswith("pos_embedding"):  # the new token's position starts as the class token's
            np.testing.assert_array_equal(loaded[path][:, [0, 0]], value[:, :1].repeat(2, axis=1))
            np.testing.assert_array_equal(loaded[path][:, 1:2], value[:, :1])
            np.testing.assert_array_equal(loaded[path][:, 2:], value[:, 1:])
        else:
            np.testing.assert_array_equal(loaded[path], value)
    distilled = vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", weights=str(out), recipe="small-data",
                             teacher="cnn", epochs=1, batch_size=10, verbose=0)
    assert distilled.model.spec.backbone.distillation_token
    assert distilled.model.spec.backbone.tokenizer == SMALL_DATA_TINY.tokenizer
