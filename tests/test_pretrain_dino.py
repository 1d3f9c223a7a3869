"""Pre-training by self-distillation (``method="dino"``): the loss, the teacher's moving average and
the centre against NumPy, no gradient reaches the teacher, the views, the position embedding at
the local views' grid, resume, the backbone file fine-tunes, JAX, clear errors."""

from __future__ import annotations

import json
import math
import textwrap

import h5py
import keras
import numpy as np
import pytest

import vitkit
from conftest import TINY_BACKBONE, run_python, stop_after_the_first_epoch, without_timing
from test_pretrain import SMALL_DATA_TINY, file_arrays, smooth_images
from vitkit.data import warp
from vitkit.errors import ConfigError, OutputExistsError
from vitkit.models.backbone import VisionTransformer
from vitkit.models.classifier import build_model
from vitkit.models.dino import (CENTRE_MOMENTUM, STUDENT_TEMPERATURE, DinoLoss, DinoModel, momentum_at,
                                teacher_temperature_at)
from vitkit.models.multicrop import MultiCrop, local_crop_size
from vitkit.training.pretrainsettings import resolve_pretrain_settings
from vitkit.training.pretrainstate import PretrainKeeper

DINO_TINY = dict(TINY_BACKBONE, image_size=32, batch_size=10, verbose=0, method="dino", prototypes=64, local_crops=2)


def numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def tiny_model(steps_per_epoch: int = 3, epochs: int = 2, **options) -> DinoModel:
    return DinoModel(SMALL_DATA_TINY, (32, 32), steps_per_epoch=steps_per_epoch, epochs=epochs,
                     prototypes=options.pop("prototypes", 16), local_crops=options.pop("local_crops", 2), seed=0,
                     **options)


def values(variables) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def scramble_student(model: DinoModel, seed: int = 1) -> None:
    """Give the student values apart from the teacher's, so that a moving average shows."""
    rng = np.random.default_rng(seed)
    for _, student in model.pairs:
        student.assign(keras.ops.convert_to_numpy(student) + rng.normal(0, 0.05, student.shape).astype("float32"))


# The loss, the schedules, the centre and the moving average -----------------------------------

def test_loss_is_the_mean_cross_entropy_over_pairs_of_different_views():
    rng = np.random.default_rng(0)
    teacher = numpy_softmax(rng.normal(size=(2, 5, 7)) / 0.05).astype("float32")
    student = rng.normal(size=(4, 5, 7)).astype("float32")
    value = float(keras.ops.convert_to_numpy(DinoLoss()(teacher, student)))
    log_student = np.log(numpy_softmax(student.astype(np.float64) / STUDENT_TEMPERATURE))
    terms = [np.mean(-(teacher[i] * log_student[v]).sum(-1)) for i in range(2) for v in range(4) if v != i]
    assert len(terms) == 6
    assert value == pytest.approx(np.mean(terms), rel=1e-5)


def test_schedules_follow_dino():
    assert float(momentum_at(0, 100)) == pytest.approx(0.996)
    assert float(momentum_at(50, 100)) == pytest.approx(0.998)
    assert float(momentum_at(100, 100)) == pytest.approx(1.0)
    assert float(momentum_at(25, 100)) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2, rel=1e-6)
    assert [float(teacher_temperature_at(step, 10, 0.04, 0.07)) for step in (0, 5, 10, 20)] == pytest.approx(
        [0.04, 0.055, 0.07, 0.07])


def test_teacher_output_is_centred_and_sharpened_and_the_centre_moves_after_it():
    model = tiny_model()
    rng = np.random.default_rng(0)
    views = [rng.uniform(-1, 1, (3, 32, 32, 3)).astype("float32") for _ in range(2)]
    model.centre.assign(rng.normal(0, 0.1, (1, 16)).astype("float32"))
    model.step.assign(2.0)
    centre = values([model.centre])[0]
    logits = keras.ops.convert_to_numpy(model.teacher_head(model.teacher(np.concatenate(views), training=True)))
    probabilities = keras.ops.convert_to_numpy(model.teacher_probabilities(views, update_centre=True))
    temperature = float(teacher_temperature_at(2.0, model.warmup_steps))
    np.testing.assert_allclose(probabilities, numpy_softmax((logits - centre) / temperature).reshape(2, 3, 16),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.centre),
                               CENTRE_MOMENTUM * centre + (1 - CENTRE_MOMENTUM) * logits.mean(0, keepdims=True),
                               rtol=1e-5, atol=1e-7)


def test_teacher_is_the_moving_average_of_the_student_and_gets_no_gradient():
    model = tiny_model(steps_per_epoch=1, epochs=4)
    teacher_ids = {id(t) for t, _ in model.pairs} | {id(model.centre), id(model.step)}
    assert not teacher_ids & {id(v) for v in model.trainable_variables}
    assert len(model.trainable_variables) == len(model.student.trainable_weights) + len(model.student_head.trainable_weights)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.5))
    scramble_student(model)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    for step in range(3):
        teacher, student = values([t for t, _ in model.pairs]), values([s for _, s in model.pairs])
        prototypes = keras.ops.convert_to_numpy(model.student_head.directions)
        model.train_on_batch(images)
        m = float(momentum_at(step, model.total_steps))
        for (variable, _), t, s in zip(model.pairs, teacher, student):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), m * t + (1 - m) * s, rtol=1e-5, atol=1e-6)
        after = keras.ops.convert_to_numpy(model.student_head.directions)
        changed = not np.allclose(after / np.linalg.norm(after, axis=0), prototypes / np.linalg.norm(prototypes, axis=0))
        assert changed == (step >= model.frozen_steps)  # the prototypes' direction waits for the first epoch
    assert float(keras.ops.convert_to_numpy(model.step)) == 3.0


# Views and the position embedding at their grid ------------------------------------------------

def test_views_have_their_sizes_and_a_whole_crop_at_half_size_is_the_two_by_two_mean():
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    halved = warp.warp(images, warp.affine(*(np.full(2, v, "float32") for v in (2.0, 0.0, 0.5, 0.0, 2.0, 0.5))),
                       size=(16, 16))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(halved),
                               images.reshape(2, 16, 2, 16, 2, 3).mean(axis=(2, 4)), rtol=1e-5, atol=1e-3)

    assert local_crop_size((32, 32), 8) == (16, 16) and local_crop_size((64, 48), 8) == (32, 24)
    assert local_crop_size((16, 16), 8) == (16, 16)
    crops = MultiCrop((32, 32), (16, 16), 3, seed=0)
    global_views, local_views = crops(images.astype("uint8"))
    assert [tuple(v.shape) for v in global_views] == [(2, 32, 32, 3)] * 2
    assert [tuple(v.shape) for v in local_views] == [(2, 16, 16, 3)] * 3
    arrays = [keras.ops.convert_to_numpy(v) for v in global_views + local_views]
    assert all(a.min() >= 0 and a.max() <= 255 for a in arrays)
    assert not np.allclose(arrays[0], arrays[1])  # drawn per view


def test_a_backbone_reads_smaller_images_with_its_position_embedding_resampled():
    layer = VisionTransformer(**SMALL_DATA_TINY.to_dict(), name="vit")
    layer.build((None, 32, 32, 3))
    embedding = keras.ops.convert_to_numpy(layer.position_embedding.pos_embedding)
    small = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    tokens = keras.ops.convert_to_numpy(layer._sequence(small))
    patches = keras.ops.convert_to_numpy(layer.embedding(small))
    grid = embedding[0, 1:].reshape(4, 4, -1)
    resampled = grid.reshape(2, 2, 2, 2, -1).mean(axis=(1, 3)).reshape(4, -1)  # half-pixel bilinear, 4x4 -> 2x2
    np.testing.assert_allclose(tokens[:, 1:], patches + resampled, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tokens[:, 0], np.broadcast_to(embedding[0, 0] + keras.ops.convert_to_numpy(
        layer.class_token.cls)[0, 0], (2, embedding.shape[-1])), rtol=1e-5, atol=1e-6)
    assert keras.ops.convert_to_numpy(layer(small)).shape == (2, 32)


# Settings and errors ----------------------------------------------------------------------------

def test_settings_of_each_method_and_clear_errors():
    dino = resolve_pretrain_settings(method="dino", epochs=20)
    assert (dino.learning_rate, dino.weight_decay, dino.prototypes, dino.local_crops) == (5e-4, 0.04, 1024, 4)
    assert dino.mask_ratio is None and dino.augment is None and dino.record()["method"] == "dino"
    simmim = resolve_pretrain_settings(epochs=20)
    assert simmim.method == "simmim" and simmim.prototypes is None and simmim.mask_ratio == 0.6
    with pytest.raises(ConfigError, match="method must be one of simmim, dino, got 'byol'"):
        resolve_pretrain_settings(method="byol")
    with pytest.raises(ConfigError, match="mask_ratio belong"):
        resolve_pretrain_settings(method="dino", mask_ratio=0.5)
    with pytest.raises(ConfigError, match="prototypes belong"):
        resolve_pretrain_settings(prototypes=64)
    with pytest.raises(ConfigError, match="at least 2 prototypes"):
        resolve_pretrain_settings(method="dino", prototypes=1)


def test_command_line_refuses_a_bad_method(cli, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli("pretrain", tmp_path, "--out", tmp_path / "x.backbone.weights.h5", "--method", "mae")
    assert exit_info.value.code == 2
    assert "--method: invalid choice: 'mae' (choose from 'simmim', 'dino')" in capsys.readouterr().err
    status, _, stderr = cli("pretrain", tmp_path, "--out", tmp_path / "x.backbone.weights.h5", "--method", "dino",
                            "--mask-ratio", "0.5")
    assert status == 2 and "mask_ratio belong(s) to method simmim, not dino" in stderr


# Runs --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_dino_writes_the_teachers_backbone_and_train_fine_tunes_it(shape_arrays, tmp_path):
    out = tmp_path / "d.backbone.weights.h5"
    result = vitkit.pretrain(smooth_images(30), out=out, epochs=2, **DINO_TINY)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(np.isfinite(row["loss"]) for row in result.history)
    metadata = json.loads(h5py.File(out, "r").attrs["vitkit"])
    assert metadata["pretraining"]["method"] == "dino" and metadata["pretraining"]["prototypes"] == 64
    assert metadata["backbone"] == {**SMALL_DATA_TINY.to_dict(), "drop_path": 0.1}
    model = build_model(["a", "b", "c"], weights=str(out))
    for loaded, saved in zip(values(model.backbone.weights), file_arrays(out)):
        np.testing.assert_array_equal(loaded, saved)
    tuned = vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", weights=str(out), recipe="small-data",
                         epochs=1, batch_size=10, verbose=0)
    assert tuned.model.spec.backbone.tokenizer == "conv" and np.isfinite(tuned.history[-1]["loss"])


@pytest.mark.slow
def test_an_interrupted_dino_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    images = smooth_images(20)
    options = dict(DINO_TINY, epochs=2, seed=3)
    whole = vitkit.pretrain(images, out=tmp_path / "a.backbone.weights.h5", **options)

    stop_after_the_first_epoch(monkeypatch, PretrainKeeper)
    out = tmp_path / "b.backbone.weights.h5"
    with pytest.raises(KeyboardInterrupt, match="continue it with --resume"):
        vitkit.pretrain(images, out=out, **options)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="other options.*method"):
        vitkit.pretrain(images, out=out, resume=True, **{k: v for k, v in options.items()
                                                         if k not in ("method", "prototypes", "local_crops")})
    resumed = vitkit.pretrain(images, out=out, resume=True, **options)

    assert without_timing(resumed.history) == without_timing(whole.history)
    for a, b in zip(file_arrays(out), file_arrays(whole.backbone_path)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(OutputExistsError):
        vitkit.pretrain(images, out=out, **options)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_dino_on_two_devices_writes_a_backbone_file(backend):
    devices = ('os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"' if backend == "jax" else
               'import tensorflow as tf; tf.config.set_logical_device_configuration('
               'tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)')
    code = textwrap.dedent(f"""
        import os
        {devices}
        import pathlib, tempfile
        import numpy as np
        import vitkit
        x = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
        out = pathlib.Path(tempfile.mkdtemp()) / "m.backbone.weights.h5"
        result = vitkit.pretrain(x, out=out, epochs=2, batch_size=8, image_size=32, verbose=0, devices=2,
                                 method="dino", prototypes=32, local_crops=2, **{TINY_BACKBONE!r})
        model = vitkit.build_model(["a", "b"], weights=str(out))
        loss = result.history[-1]["loss"]
        print("RESULT", len(result.history), 0 < loss < np.log(32) + 0.5, model.backbone.config.tokenizer)
    """)
    done = run_python(code, backend=backend)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RESULT 2 True conv" in done.stdout  # the loss of the global batch, not a sum over the devices
