"""The steps of :func:`vitkit.train`, each on its own: settings, data, model, compile and callbacks,
outputs. Whole runs are in ``test_train.py`` and the resume tests."""

from __future__ import annotations

import dataclasses
import inspect
import json

import keras
import numpy as np
import pytest

import vitkit
from conftest import FIXTURES, TINY_BACKBONE, TINY_CLASSES
from vitkit.data.imageset import ImageSet, SkippedImage
from vitkit.data.mixing import MixedBatches
from vitkit.errors import ConfigError, ManifestError, OutputExistsError
from vitkit.models.sources import open_checkpoint
from vitkit.training.building import build_run_model, rebuild_model
from vitkit.training.datasets import batch_streams, load_training_data, sample_weights
from vitkit.training.fitting import Phase, make_callbacks, make_optimizer, phases
from vitkit.training.outputs import (checkpoint_path, output_paths, prepare_outputs, write_outputs,
                                     write_skipped_images)
from vitkit.training.parallel import SINGLE
from vitkit.training.runstate import RunKeeper
from vitkit.training.settings import RunSettings, resolve_settings

TIMM = FIXTURES / "timm"
TINY = dict(backbone="vit_micro", weights="none", image_size=32, **TINY_BACKBONE)


# Settings ------------------------------------------------------------------------------------------

def test_settings_record_the_model_files_training_metadata_as_before():
    """The keys, their order and the JSON values that model files written before these steps hold."""
    settings = resolve_settings(recipe="plain", epochs=3, classes=["square", "circle"], class_weights={"circle": 2},
                                augment={"zoom": 0.1}, **TINY)
    expected = {
        "recipe": "plain", "backbone": "vit_micro", "weights": None, "image_size": [32, 32], "epochs": 3,
        "batch_size": 16, "learning_rate": 1e-4, "optimizer": "adam", "weight_decay": 0.05,
        "schedule": "constant", "warmup_epochs": 0, "label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0,
        "class_weights": {"circle": 2}, "freeze_backbone_epochs": 0, "augment": {"zoom": 0.1},
        "head_width": 21, "resize_mode": "stretch", "preprocess": "tf", "patience": 5,
        "reduce_lr_patience": 2, "val_fraction": 0.1, "seed": 0, "precision": "auto",
        "classes": ["square", "circle"], **TINY_BACKBONE,
    }
    recorded = settings.record()
    assert json.dumps(recorded) == json.dumps(expected)  # same order too
    assert json.loads(json.dumps(recorded)) == recorded  # what a resumed run compares with


def test_a_checkpoint_gives_the_size_and_preparation_and_the_file_records_them():
    """What a run from a timm checkpoint records: the backbone given (none: the checkpoint's), and
    its preparation (tuples as lists) between ``resize_mode`` and ``patience``."""
    path = str(TIMM / "dinov2_reg")
    settings = resolve_settings(recipe="plain", weights=path, pretrained=open_checkpoint(path))
    recorded = settings.record()
    keys = list(recorded)
    assert keys[keys.index("resize_mode"):keys.index("patience") + 1] == [
        "resize_mode", "preprocess", "mean", "std", "interpolation", "patience"]
    assert (recorded["backbone"], recorded["weights"], recorded["image_size"]) == (None, path, [42, 42])
    assert (recorded["preprocess"], recorded["mean"], recorded["std"], recorded["interpolation"]) == \
        ("normalize", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "bicubic")
    raw = resolve_settings(recipe="plain", weights=path, image_size=56, preprocess="raw",
                           pretrained=open_checkpoint(path))
    assert (raw.image_size, raw.preprocess, raw.mean, raw.std, raw.interpolation) == ((56, 56), "raw", None, None,
                                                                                       "bicubic")


def test_recipe_defaults_fill_what_is_not_given_and_weights_follow_the_backbone(tmp_path):
    scratch = resolve_settings(weights="none", epochs=10)
    assert (scratch.recipe, scratch.backbone, scratch.optimizer, scratch.warmup_epochs) == ("small-data", "vit_micro",
                                                                                             "adamw", 2)
    assert scratch.backbone_options == {"tokenizer": "conv", "locality_attention": True, "drop_path": 0.1}
    assert scratch.image_size == (32, 32) and scratch.classes is None
    pretrained = resolve_settings(backbone="vit_b16", image_size=(192, 256), learning_rate=3e-4)
    assert (pretrained.recipe, pretrained.weights, pretrained.learning_rate) == ("plain", "imagenet21k", 3e-4)
    assert pretrained.image_size == (192, 256) and pretrained.backbone_options == {}
    assert resolve_settings(recipe="plain", backbone="vit_micro").weights is None  # "auto": none for small presets
    assert resolve_settings(recipe="plain", weights=tmp_path / "w.npz").weights == str(tmp_path / "w.npz")


def test_settings_are_frozen_all_the_way_down():
    augment = {"zoom": 0.1}
    settings = resolve_settings(recipe="plain", augment=augment, class_weights={"a": 1.0}, **TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 5
    for mapping in (settings.augment, settings.class_weights, settings.backbone_options):
        with pytest.raises(TypeError):
            mapping["x"] = 1
    augment["zoom"] = 0.5  # the caller's dict is not the settings'
    assert settings.augment["zoom"] == 0.1
    options = settings.model_options()
    assert type(options["augment"]) is dict and options["patch_size"] == 8


@pytest.mark.parametrize("option, message", [
    (dict(optimizer="sgd"), "optimizer must be one of"),
    (dict(schedule="step"), "schedule must be one of"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(freeze_backbone_epochs=-1), "freeze_backbone_epochs must be >= 0"),
    (dict(batch_size=0), "batch size must be >= 1"),
    (dict(class_weights="equal"), "class_weights must be 'balanced' or a dict"),
    (dict(recipe="huge"), "unknown recipe 'huge'"),
    (dict(image_size=(32, 0)), "image size must be a positive integer"),
])
def test_unusable_settings_are_refused_before_any_data_is_read(option, message):
    with pytest.raises(ConfigError, match=message):
        resolve_settings(**{**TINY, **option})


# Data ----------------------------------------------------------------------------------------------

def test_data_step_holds_out_a_stratified_seeded_share_of_a_photo_tree(photo_tree):
    settings = resolve_settings(val_fraction=0.25, seed=3, **TINY)
    data = load_training_data(photo_tree, None, settings)
    assert data.class_names == TINY_CLASSES
    assert (len(data.train), len(data.val)) == (18, 6)
    assert sorted(data.val.labels) == sorted(TINY_CLASSES * 2)  # two of each class's eight
    assert not set(data.train.names) & set(data.val.names)
    assert data.train.all_pixels().shape == (18, 32, 32, 3)
    again = load_training_data(photo_tree, None, settings)
    assert again.val.names == data.val.names
    assert load_training_data(photo_tree, None, dataclasses.replace(settings, val_fraction=0.0)).val is None


def test_data_step_takes_a_manifests_split_column_and_the_given_class_order(photo_tree, tmp_path):
    rows = ["base_path,type_dir,file_name,split"]
    images = sorted(photo_tree.rglob("*.png"))
    for i, image in enumerate(images):
        rows.append(f"{photo_tree},{image.parent.name},{image.name},{'val' if i % 4 == 0 else 'train'}")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    settings = resolve_settings(classes=["triangle", "circle", "square"], **TINY)
    data = load_training_data(tmp_path / "all.csv", None, settings)
    assert (len(data.train), len(data.val)) == (18, 6)
    assert data.class_names == ("triangle", "circle", "square")


def test_data_step_refuses_one_class_and_a_class_without_images(shape_arrays):
    x, y = shape_arrays
    with pytest.raises(ManifestError, match="at least two"):
        load_training_data((x, np.array(["circle"] * len(x))), None, resolve_settings(**TINY))
    with pytest.raises(ManifestError, match=r"no training images for class\(es\) \['hexagon'\]"):
        load_training_data((x, y), None, resolve_settings(classes=[*TINY_CLASSES, "hexagon"], **TINY))


def test_balanced_class_weights_are_inverse_frequencies():
    labels = ["a"] * 6 + ["b"] * 2 + ["c"] * 4
    images = ImageSet(names=[str(i) for i in range(12)], labels=labels, read=None, image_size=(32, 32))
    weights = sample_weights(images, ["a", "b", "c"], "balanced")
    expected = {"a": 12 / (3 * 6), "b": 12 / (3 * 2), "c": 12 / (3 * 4)}
    np.testing.assert_allclose(weights, [expected[label] for label in labels], rtol=1e-6)
    assert np.isclose(weights.sum(), len(labels))  # each class carries the same total weight
    np.testing.assert_allclose(sample_weights(images, ["a", "b", "c"], {"b": 3.0}), [1.0] * 6 + [3.0] * 2 + [1.0] * 4)
    with pytest.raises(ConfigError, match=r"unknown class\(es\) \['d'\]"):
        sample_weights(images, ["a", "b", "c"], {"d": 2.0})


def test_batch_streams_drop_the_last_partial_training_batch_and_mix_when_asked(shape_arrays):
    data = load_training_data(shape_arrays, None, resolve_settings(val_fraction=0.2, **TINY))
    settings = resolve_settings(batch_size=16, **TINY)
    batches, val_batches = batch_streams(data, settings, SINGLE)
    assert len(batches) == len(data.train) // 16 and len(val_batches) == -(-len(data.val) // 16)
    x, y = batches[0][:2]
    assert x.shape == (16, 32, 32, 3) and y.shape == (16, 3)
    mixed, _ = batch_streams(data, dataclasses.replace(settings, mixup=0.8), SINGLE)
    assert isinstance(mixed, MixedBatches)


# Model, compile, callbacks --------------------------------------------------------------------------

def test_a_checkpoints_model_is_built_from_the_opened_checkpoint_and_rebuilt_from_its_spec():
    path = str(TIMM / "dinov2_reg")
    pretrained = open_checkpoint(path)
    settings = resolve_settings(recipe="plain", weights=path, augment=False, pretrained=pretrained)
    model = build_run_model(settings, ["a", "b"], "mixed_bfloat16", pretrained)
    direct = vitkit.build_model(["a", "b"], weights=path, head_width=21, augment=False, seed=0)
    assert model.spec == direct.spec and model.spec.backbone.register_tokens == 4
    for built, reference in zip(model.backbone.weights, direct.backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(built), keras.ops.convert_to_numpy(reference))
    again = rebuild_model(model, "mixed_bfloat16")
    assert again.spec == model.spec and again.get_layer("head_hidden").compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"


def test_model_is_built_under_the_training_precision_and_the_policy_is_restored():
    settings = resolve_settings(recipe="plain", **TINY)
    model = build_run_model(settings, ["a", "b"], "mixed_bfloat16")
    dense = model.get_layer("head_hidden")
    assert (dense.compute_dtype, dense.kernel.dtype) == ("bfloat16", "float32")
    assert model.get_layer("head_output").compute_dtype == "float32"  # probabilities in full precision
    assert keras.config.dtype_policy().name == "float32"
    assert model.class_names == ["a", "b"] and model.spec.image_size == (32, 32)


def test_phases_freeze_the_backbone_first():
    settings = resolve_settings(epochs=5, freeze_backbone_epochs=2, **TINY)
    assert phases(settings) == [Phase(0, 2, False), Phase(2, 5, True)]
    assert phases(dataclasses.replace(settings, freeze_backbone_epochs=9)) == [Phase(0, 5, False), Phase(5, 5, True)]


def test_cosine_schedule_warms_up_to_the_peak_then_decays_to_zero():
    settings = resolve_settings(epochs=10, warmup_epochs=2, learning_rate=1e-3, schedule="cosine",
                                optimizer="adamw", weight_decay=0.01, **TINY)
    optimizer = make_optimizer(settings, epochs=10, steps_per_epoch=5)

    def rate_at(step: int) -> float:
        optimizer.iterations.assign(step)
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    decay = 0.5 * (1 + np.cos(np.pi * 20 / 40))  # cosine over the 40 steps after warm-up
    np.testing.assert_allclose([rate_at(step) for step in (0, 5, 10, 30, 50)],
                               [0.0, 5e-4, 1e-3, 1e-3 * decay, 0.0], atol=1e-9)
    assert isinstance(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == 0.01
    constant = make_optimizer(dataclasses.replace(settings, schedule="constant", optimizer="adam"), 10, 5)
    assert type(constant) is keras.optimizers.Adam
    assert np.isclose(float(keras.ops.convert_to_numpy(constant.learning_rate)), 1e-3)


def test_callbacks_monitor_validation_and_keep_the_run_last(tmp_path):
    paths = output_paths(tmp_path / "m.weights.h5")
    settings = resolve_settings(recipe="plain", epochs=4, patience=0, **TINY)
    callbacks = make_callbacks(settings, paths, paths.model, validated=True)
    assert [type(c).__name__ for c in callbacks.stateful] == ["EarlyStopping", "ReduceLROnPlateau"]
    assert callbacks.early_stopping.patience == 5 and callbacks.early_stopping.monitor == "val_loss"
    assert callbacks.keeper.options == settings.record() and callbacks.keeper.monitor == "val_loss"
    assert callbacks.for_fit(None)[-1] is callbacks.keeper
    cosine = make_callbacks(dataclasses.replace(settings, schedule="cosine"), paths, paths.model, validated=False)
    assert len(cosine.stateful) == 1 and cosine.keeper.monitor == "loss"


# Outputs --------------------------------------------------------------------------------------------

def test_output_paths_sit_beside_the_model_file(tmp_path):
    paths = output_paths(tmp_path / "models" / "shapes.weights.h5")
    assert [p.name for p in (paths.history, paths.curves, paths.skipped, paths.run)] == [
        "shapes.history.csv", "shapes.curves.png", "shapes.skipped.csv", "shapes.run"]
    assert {p.parent for p in dataclasses.astuple(paths)} == {tmp_path / "models"}
    with pytest.raises(ConfigError, match="must end in .weights.h5"):
        output_paths(tmp_path / "shapes.h5")


def test_prepare_outputs_refuses_to_overwrite_and_finds_an_interrupted_run(tmp_path, capsys):
    paths = output_paths(tmp_path / "m.weights.h5")
    paths.skipped.write_text("old")
    with pytest.raises(OutputExistsError):
        prepare_outputs(paths, resume=False, overwrite=False)
    assert prepare_outputs(paths, resume=True, overwrite=True) is False
    assert "no interrupted run" in capsys.readouterr().err and not paths.skipped.exists()

    paths.run.mkdir()
    (paths.run / "state.json").write_text("{}")
    leftover = paths.run / ".state.json.abc.tmp"
    leftover.write_text("half")
    assert "add --resume to continue" in paths.resume_note()
    with pytest.raises(ConfigError, match="holds an interrupted run; continue it with --resume"):
        prepare_outputs(paths, resume=False, overwrite=False)
    assert prepare_outputs(paths, resume=True, overwrite=False) is True and not leftover.exists()
    assert prepare_outputs(paths, resume=False, overwrite=True) is False and not paths.run.exists()
    assert paths.resume_note() == ""


def test_checkpoint_path_of_the_other_processes_is_private_and_removed(tmp_path):
    paths = output_paths(tmp_path / "m.weights.h5")
    with checkpoint_path(paths, writer=True) as path:
        assert path == paths.model
    with checkpoint_path(paths, writer=False) as path:
        assert path.name == "m.weights.h5" and path.parent != tmp_path and path.parent.is_dir()
    assert not path.parent.exists()


def test_skipped_images_are_listed_once(tmp_path):
    skipped = [SkippedImage("a.png", "3", "truncated"), SkippedImage("b.png", "4", "not an image")]
    train = ImageSet(names=[], labels=[], read=None, image_size=(8, 8), skipped=skipped)
    val = ImageSet(names=[], labels=[], read=None, image_size=(8, 8), skipped=skipped)  # split off train
    path = write_skipped_images(tmp_path / "m.skipped.csv", train, val, None)
    assert path.read_text().splitlines() == ["image,row,reason", "a.png,3,truncated", "b.png,4,not an image"]
    assert write_skipped_images(tmp_path / "n.skipped.csv", dataclasses.replace(train, skipped=[])) is None


@pytest.mark.parametrize("writer", [True, False])
def test_write_outputs_draws_the_curves_and_clears_the_resume_state(tmp_path, writer):
    paths = output_paths(tmp_path / "m.weights.h5")
    paths.run.mkdir()
    keeper = RunKeeper(paths.model, paths.run, paths.history, "val_loss", {}, [], writes_run=writer)
    keeper.history = [{"epoch": 1, "loss": 1.0, "val_loss": 1.2, "accuracy": 0.5, "val_accuracy": 0.4},
                      {"epoch": 2, "loss": 0.5, "val_loss": 0.9, "accuracy": 0.7, "val_accuracy": 0.6}]
    write_outputs(keeper, paths, writer=writer)
    assert paths.curves.is_file() == writer
    assert not writer or paths.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths.run.exists() != writer  # only the writing process owns the run folder


def test_run_settings_is_the_only_place_options_are_listed():
    """Every recorded option is a field, and every train() keyword that shapes the result reaches one."""
    from vitkit.training.train import train

    recorded = {field.name for field in dataclasses.fields(RunSettings)} - {"backbone_options"}
    keywords = set(inspect.signature(train).parameters) - {"train_data", "val_data", "backbone_overrides"}
    not_recorded = {"out", "label_from", "root", "cache_dir", "on_bad_image", "resume", "overwrite", "verbose", "devices",
                    "architecture"}  # how the checkpoint is read; what it tells is in the model's spec
    from_checkpoint = {"mean", "std", "interpolation"}
    assert keywords - not_recorded == recorded - from_checkpoint
    assert set(inspect.signature(resolve_settings).parameters) - {"backbone_overrides", "pretrained"} == \
        recorded - from_checkpoint
