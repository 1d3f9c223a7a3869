"""Distillation from a CNN teacher (DeiT's hard distillation with a distillation token): the
classifier's two heads against NumPy, the loss against NumPy on a fixed batch, the command line
end to end (teacher file, loading, prediction, explanation), the teacher's errors and resume."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

import vitkit
from conftest import ROOT, TINY_BACKBONE, TINY_CLASSES, make_photo_tree, run_commands, run_python, stop_after_the_first_epoch
from vitkit.data.imageset import load_images
from vitkit.errors import ConfigError
from vitkit.models.cnn import small_cnn
from vitkit.explanation.outputs import write_attention_json
from vitkit.models.modelfile import load_model, read_metadata
from vitkit.training.distill import Distiller, MeanHeadAccuracy
from vitkit.training.runstate import RunKeeper, random_state_variables
from vitkit.training.settings import resolve_settings
from vitkit.training.train import train

TINY_CLI = ["--weights", "none", "--image-size", "32", "--batch-size", "8", "--patch-size", "8", "--layers", "2",
            "--hidden-size", "32", "--heads", "4", "--mlp-dim", "64", "--tokenizer", "patch",
            "--no-locality-attention"]
TINY = dict(weights="none", image_size=32, batch_size=8, verbose=0, tokenizer="patch", locality_attention=False,
            **TINY_BACKBONE)


def numpy_head(weights: dict[str, np.ndarray], prefix: str, features: np.ndarray) -> np.ndarray:
    """``BatchNorm -> Dense(gelu tanh) -> BatchNorm -> Dense softmax`` in inference mode, float64."""
    def norm(name, x):
        w = {k: weights[f"{prefix}{name}/{k}"] for k in ("gamma", "beta", "moving_mean", "moving_variance")}
        return (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + 1e-3) * w["gamma"] + w["beta"]

    x = norm("head_norm_0", features) @ weights[f"{prefix}head_hidden/kernel"] + weights[f"{prefix}head_hidden/bias"]
    x = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    x = norm("head_norm_1", x) @ weights[f"{prefix}head_output/kernel"] + weights[f"{prefix}head_output/bias"]
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def distilled(tiny_model):
    """A distilled tiny classifier whose weights (BatchNorm statistics too) are all random."""
    model = tiny_model(distillation_token=True)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        value = rng.normal(0, 0.3, variable.shape)
        variable.assign((np.abs(value) + 0.5 if "variance" in variable.path else value).astype("float32"))
    return model


def test_the_prediction_is_the_mean_of_the_two_heads(distilled):
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    weights = {v.path: ops.convert_to_numpy(v).astype(np.float64) for v in distilled.weights}
    scaled = images.astype("float32") / 127.5 - 1.0
    features, distillation = (ops.convert_to_numpy(f).astype(np.float64)
                              for f in distilled.backbone(scaled, distillation=True))
    class_head, distillation_head = numpy_head(weights, "", features), numpy_head(weights, "dist_", distillation)
    assert np.abs(class_head - distillation_head).max() > 0.05  # two heads, not one twice
    expected = (class_head + distillation_head) / 2
    np.testing.assert_allclose(distilled.predict(images, verbose=0), expected, atol=1e-5)
    logits, attention = distilled.logits_and_attention(images)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.softmax(logits)), expected, atol=1e-5)
    assert attention.shape == (4, 2, 4, 2 + 16, 2 + 16)
    probabilities, _ = distilled.attention_model()(images)
    np.testing.assert_allclose(ops.convert_to_numpy(probabilities), expected, atol=1e-5)


def test_a_distilled_model_file_records_the_token_and_loads(distilled, tmp_path):
    path = vitkit.save_model(distilled, tmp_path / "distilled.weights.h5")
    loaded = load_model(path)
    assert loaded.spec == distilled.spec and loaded.spec.backbone.distillation_token
    assert {"vit/dist_token/tokens", "dist_head_output/kernel"} <= {v.path for v in loaded.weights}
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), distilled.predict(images, verbose=0))


def flat_teacher(seed: int = 0) -> keras.Model:
    """A teacher whose prediction depends on where things are in the image (a flip changes it)."""
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(0, 0.2, seed))(x)
    return keras.Model(inputs, outputs)


def numpy_cross_entropy(targets: np.ndarray, probabilities: np.ndarray) -> float:
    probabilities = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    probabilities = probabilities / probabilities.sum(-1, keepdims=True)
    return float(-(targets * np.log(probabilities)).sum(-1).mean())


@pytest.mark.parametrize("augment", [False, {"flip": "horizontal", "translation": 0.2}], ids=["off", "flip"])
def test_the_distillation_loss_is_the_numpy_one_on_a_fixed_batch(tiny_model, augment):
    student = tiny_model(distillation_token=True, augment=augment, seed=4)
    teacher = flat_teacher()
    distiller = Distiller(student, teacher, label_smoothing=0.1)
    images = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.eye(3)[np.arange(8) % 3].astype("float32")

    # The pixels the student is about to see: drawn, then the random state put back for the real step.
    state = [ops.convert_to_numpy(v) for v in random_state_variables(student)]
    pixels = ops.convert_to_numpy(student.augment_pixels(images, training=True))
    for variable, value in zip(random_state_variables(student), state):
        variable.assign(value)
    packed = ops.convert_to_numpy(distiller(images, training=True))
    class_head, distillation_head, teacher_labels = packed[:, :3], packed[:, 3:6], packed[:, 6:]

    seen = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    expected_labels = np.eye(3)[teacher.predict(seen, verbose=0).argmax(-1)]
    np.testing.assert_array_equal(teacher_labels, expected_labels)
    on_input = np.eye(3)[teacher.predict(images, verbose=0).argmax(-1)]
    if augment:
        assert not np.array_equal(expected_labels, on_input), "the teacher must see the augmented images"
    else:
        np.testing.assert_array_equal(pixels, images)
    heads = [ops.convert_to_numpy(p) for p in student.head_probabilities(pixels, training=True)]
    np.testing.assert_allclose(class_head, heads[0], atol=1e-6)
    np.testing.assert_allclose(distillation_head, heads[1], atol=1e-6)

    smoothed = labels * 0.9 + 0.1 / 3
    loss = ops.convert_to_numpy(distiller.compute_loss(images, labels, packed, training=True))
    expected = 0.5 * numpy_cross_entropy(smoothed, class_head) + 0.5 * numpy_cross_entropy(expected_labels, distillation_head)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)

    evaluated = ops.convert_to_numpy(distiller(images, training=False))
    assert not evaluated[:, 6:].any()  # the teacher does not run outside training
    mean = (evaluated[:, :3] + evaluated[:, 3:6]) / 2
    np.testing.assert_allclose(mean, student.predict(images, verbose=0), atol=1e-6)
    validation = ops.convert_to_numpy(distiller.compute_loss(images, labels, evaluated, training=False))
    np.testing.assert_allclose(validation, numpy_cross_entropy(smoothed, mean), rtol=1e-5)
    accuracy = MeanHeadAccuracy(3)
    accuracy.update_state(labels, evaluated)
    assert float(accuracy.result()) == pytest.approx(float((mean.argmax(-1) == labels.argmax(-1)).mean()))


def test_a_teacher_files_regularization_is_no_part_of_the_students_loss(tiny_model):
    """Constants of the frozen teacher (which TensorFlow would add once per device)."""
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(3, activation="softmax", activity_regularizer=keras.regularizers.L2(10.0))
    regularized = keras.Model(inputs, dense(x))
    plain = flat_teacher()
    regularized.set_weights(plain.get_weights())
    images = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    student, losses = tiny_model(distillation_token=True), []
    for teacher in (plain, regularized):
        distiller = Distiller(student, teacher)
        packed = distiller(images, training=True)
        assert len(distiller.losses) == (teacher is regularized)
        losses.append(float(ops.convert_to_numpy(distiller.compute_loss(images, labels, packed, training=True))))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_a_student_without_the_token_is_refused(tiny_model):
    with pytest.raises(ConfigError, match="distillation token"):
        Distiller(tiny_model(), flat_teacher())


# The command line, end to end -----------------------------------------------------------------------

@pytest.fixture
def photos(tmp_path) -> Path:
    return make_photo_tree(tmp_path / "photos", per_class=6, size=32)


def test_train_with_a_cnn_teacher_then_load_predict_and_explain(cli, photos, tmp_path):
    out = tmp_path / "models" / "shapes.weights.h5"
    status, printed, errors = cli("train", photos, "--out", out, "--teacher", "cnn", "--teacher-epochs", "2",
                                  "--epochs", "1", *TINY_CLI)
    assert status == 0, errors
    assert "training the small CNN for 2 epochs" in errors
    teacher_file = tmp_path / "models" / "shapes.teacher.keras"
    assert f"teacher: {teacher_file} (trained in" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "shapes.curves.png", "shapes.history.csv", "shapes.teacher.keras", "shapes.weights.h5"]
    teacher = keras.saving.load_model(teacher_file)
    assert teacher.name == "small_cnn" and teacher.output.shape[-1] == 3

    model = load_model(out)
    assert model.spec.backbone.distillation_token and model.class_names == list(TINY_CLASSES)
    training = read_metadata(out)["training"]
    assert training["teacher"] == "cnn" and training["teacher_epochs"] == 2 and training["distillation_token"] is True
    table = vitkit.predict(model, photos, progress=False)
    assert len(table) == 18
    report = tmp_path / "report.html"
    for method in ("integrated", "rollout", "gradient"):
        result = vitkit.explain(model, photos, method=method, report=report, overwrite=True, progress=False)
        grid = (32, 32) if method == "integrated" else (4, 4)
        assert result.native_maps.shape == (18, *grid) and np.isfinite(result.native_maps).all()
        np.testing.assert_allclose(result.probabilities, table[[f"p_{name}" for name in TINY_CLASSES]].to_numpy(), atol=1e-5)
    assert result.tokens_read() == ("the class token's row over the 16 patch tokens; "
                                    "left out: the class token and the distillation token")
    assert "left out: the class token and the distillation token" in report.read_text()
    attention = tmp_path / "attention.json"
    write_attention_json(model, result.images, attention)
    assert json.loads(attention.read_text())["tokens"][:3] == ["CLS", "DIST", "patch_0_0"]


def keras_file(model: keras.Model, path: Path) -> Path:
    model.save(path)
    return path


def test_teacher_files_that_do_not_fit_are_one_line_errors(cli, photos, tmp_path):
    out = tmp_path / "m.weights.h5"
    cases = {
        "not found": (tmp_path / "missing.keras", "teacher model {} not found; give a .keras model file"),
        "not keras": (tmp_path / "teacher.h5", "teacher {} is not a .keras model file"),
        "classes": (keras_file(small_cnn(2, (32, 32)), tmp_path / "two.keras"),
                    "teacher {} predicts 2 classes, the run has 3 (circle, square, triangle)"),
        "size": (keras_file(small_cnn(3, (48, 48)), tmp_path / "big.keras"),
                 "teacher {} takes 48x48x3 images, the run's are 32x32x3"),
    }
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    cases["damaged"] = (tmp_path / "broken.keras", "teacher {} is not a readable Keras model")
    for name, (path, message) in cases.items():
        status, _, errors = cli("train", photos, "--out", out, "--teacher", path, "--epochs", "1", *TINY_CLI)
        assert status != 0 and message.format(path) in errors, name
        assert len(errors.strip().splitlines()) == 1, errors
    status, _, errors = cli("train", photos, "--out", out, "--teacher", "cnn", "--weights", "imagenet21k",
                            "--backbone", "vit_b16")
    assert status != 0 and "--teacher distils into a model trained from random weights" in errors
    assert not out.exists()


def test_a_teacher_file_with_the_right_shape_trains_the_student(photos, tmp_path):
    teacher = keras_file(flat_teacher(), tmp_path / "teacher.keras")
    result = train(photos, out=tmp_path / "m.weights.h5", teacher=teacher, epochs=1, **TINY)
    assert result.teacher_path == teacher and result.teacher_seconds is None
    assert not (tmp_path / "m.teacher.keras").exists()
    assert read_metadata(result.model_path)["training"]["teacher"] == str(teacher)
    assert "teacher_epochs" not in read_metadata(result.model_path)["training"]


def test_the_cnn_teachers_epochs_default_to_half_the_runs_and_need_the_cnn_teacher():
    assert resolve_settings(weights="none", epochs=7, teacher="cnn").teacher_epochs == 3
    assert resolve_settings(weights="none", epochs=1, teacher="cnn").teacher_epochs == 1
    assert resolve_settings(weights="none", epochs=7, teacher="cnn", teacher_epochs=3).record()["teacher_epochs"] == 3
    assert resolve_settings(weights="none", epochs=7).teacher_epochs is None
    with pytest.raises(ConfigError, match="--teacher-epochs sets how long the CNN teacher trains: add --teacher cnn"):
        resolve_settings(weights="none", teacher_epochs=3)
    with pytest.raises(ConfigError, match="teacher epochs must be >= 1, got 0"):
        resolve_settings(weights="none", teacher="cnn", teacher_epochs=0)


@pytest.mark.slow
def test_an_interrupted_distilled_run_resumes_to_the_straight_run_without_training_the_teacher_again(
        photos, tmp_path, monkeypatch):
    options = dict(TINY, epochs=2, teacher="cnn", augment=True, seed=1)
    straight = train(photos, out=tmp_path / "a.weights.h5", **options)
    stop_after_the_first_epoch(monkeypatch, RunKeeper)
    out = tmp_path / "b.weights.h5"
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        train(photos, out=out, **options)
    monkeypatch.undo()
    teacher_file = tmp_path / "b.teacher.keras"
    written = teacher_file.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the teacher was trained again")

    monkeypatch.setattr("vitkit.training.teacher.train_teacher_cnn", no_training)
    resumed = train(photos, out=out, resume=True, **options)
    assert teacher_file.stat().st_mtime_ns == written and resumed.teacher_seconds is None
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history]
    assert history == [{k: v for k, v in row.items() if k != "seconds"} for row in straight.history]
    for a, b in zip(load_model(out).weights, load_model(straight.model_path).weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name in ("b.weights.h5", "b.history.csv", "b.curves.png"):
        (tmp_path / name).unlink()
    with pytest.raises(vitkit.OutputExistsError, match="b.teacher.keras exists"):
        train(photos, out=out, **options)


def assert_predicts_the_mean_of_its_heads(path: Path, images: np.ndarray) -> None:
    """The model file's prediction is the mean of its two heads' (which differ)."""
    model = load_model(path)
    assert model.spec.backbone.distillation_token
    heads = [ops.convert_to_numpy(p)
             for p in model.head_probabilities(model.augment_pixels(images, training=False), training=False)]
    assert np.abs(heads[0] - heads[1]).max() > 1e-3
    np.testing.assert_allclose(model.predict(images, verbose=0), (heads[0] + heads[1]) / 2, atol=1e-5)


@pytest.mark.slow
def test_the_command_line_distils_on_all_devices(tmp_path):
    """``--teacher cnn --devices all`` on JAX's two CPU devices: a batch they cannot split is
    refused, then the teacher and the student train on both and the outputs are written."""
    photos = make_photo_tree(tmp_path / "photos", per_class=8, size=32)
    out = tmp_path / "m.weights.h5"
    train_command = ["train", photos, "--out", out, "--teacher", "cnn", "--devices", "all", "--epochs", "2", *TINY_CLI]
    two_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "VITKIT_PROGRESS": "0"}
    results, errors = run_commands([[*train_command, "--batch-size", "7"], train_command], backend="jax",
                                   env=two_devices)
    assert results[0][0] == 2 and "batch size 7 does not split evenly over 2 devices" in errors
    status, printed = results[1]
    assert status == 0, errors[-3000:]
    assert f"teacher: {out.with_name('m.teacher.keras')} (trained in" in printed
    assert sorted(p.name for p in tmp_path.glob("m.*")) == [
        "m.curves.png", "m.history.csv", "m.teacher.keras", "m.weights.h5"]
    with open(out.with_name("m.history.csv")) as stream:
        history = list(csv.DictReader(stream))
    assert len(history) == 2 and all(np.isfinite(float(row["loss"])) for row in history)
    assert history[0]["loss"] != history[1]["loss"]
    assert_predicts_the_mean_of_its_heads(out, load_images(photos, (32, 32), progress=False).all_pixels())


@pytest.mark.slow
def test_jax_backend_distils_resumes_and_explains(tmp_path):
    """The CNN teacher, the distilled student, its file, prediction and both map methods on JAX."""
    code = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        os.environ["VITKIT_HOME"] = {str(tmp_path / "home")!r}
        os.environ["VITKIT_PROGRESS"] = "0"
        from pathlib import Path
        import numpy as np
        import vitkit
        from conftest import make_photo_tree
        from test_distillation import TINY
        root = Path({str(tmp_path)!r})
        photos = make_photo_tree(root / "photos", per_class=6, size=32)
        result = vitkit.train(photos, out=root / "m.weights.h5", teacher="cnn", epochs=2, seed=1, **TINY)
        model = vitkit.load_model(result.model_path)
        maps = {{m: vitkit.explain(model, photos, method=m, progress=False) for m in ("rollout", "gradient")}}
        predicted = vitkit.predict(model, photos, progress=False)
        print(json.dumps({{
            "teacher": (root / "m.teacher.keras").is_file() and result.teacher_seconds is not None,
            "token": model.spec.backbone.distillation_token,
            "finite": all(bool(np.isfinite(e.native_maps).all()) for e in maps.values()),
            "same": bool(np.allclose(maps["gradient"].probabilities, predicted[["p_" + name for name in model.class_names]].to_numpy(), atol=1e-5)),
            "trained": result.history[0]["loss"] != result.history[-1]["loss"],
        }}))
    """)
    done = run_python(code, backend="jax")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # (Keras' .keras serializer imports TensorFlow where it is installed, so the teacher file does.)
    assert result == {"teacher": True, "token": True, "finite": True, "same": True, "trained": True}
