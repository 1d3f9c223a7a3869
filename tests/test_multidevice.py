"""Training on several devices and hosts trains the model one device trains on the same global batch.

The device count of a backend is fixed when it starts, so every run on several devices is a
subprocess: JAX with ``--xla_force_host_platform_device_count``, TensorFlow with logical CPU
devices (two hosts: ``test_multihost.py``). Results are compared to float tolerance: the sums
over the batch are added up in another order.

Two parameters are left out of the weight comparisons: the attention key biases (softmax does
not change when a constant is added to every score) and the encoder's final LayerNorm offset
(the head's BatchNorm subtracts the batch mean) have exactly zero gradient in exact arithmetic,
so their float round-off is all Adam sees, and Adam turns any non-zero gradient into a step of
the learning rate's size.
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import vitkit
from conftest import TINY_BACKBONE, run_python
from test_distillation import assert_predicts_the_mean_of_its_heads
from vitkit.cli import build_parser
from vitkit.data.batches import ImageBatches
from vitkit.data.imageset import load_images
from vitkit.errors import ConfigError
from vitkit.models.cnn import small_cnn
from vitkit.training.parallel import SINGLE, parse_devices, plan

ZERO_GRADIENT = ("/key/bias", "encoder_norm/beta")
TRAINING = dict(recipe="plain", backbone="vit_micro", weights="none", image_size=32, batch_size=8,
                epochs=2, learning_rate=1e-3, optimizer="adamw", augment=False, val_fraction=0.25,
                seed=0, verbose=0, **TINY_BACKBONE)
TRAINING_FLAGS = [
    "--recipe", "plain", "--backbone", "vit_micro", "--weights", "none", "--image-size", "32",
    "--batch-size", "8", "--epochs", "2", "--learning-rate", "1e-3", "--optimizer", "adamw", "--no-augment",
    "--val-fraction", "0.25", "--patch-size", "8", "--layers", "2", "--hidden-size", "32", "--heads", "4",
    "--mlp-dim", "64",
]


# Shards of the batch stream ---------------------------------------------------------------------

def numbered_images(count: int):
    """Images whose pixels all hold their index, so a batch tells which samples it holds."""
    pixels = np.arange(count, dtype=np.uint8).reshape(-1, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    return load_images((pixels, np.array(["a", "b"] * (count // 2) + ["a"] * (count % 2))), (2, 2))


def samples(batch) -> list[int]:
    return [int(value) for value in batch[0][:, 0, 0, 0]]


@pytest.mark.parametrize("size, batch_size, count, drop_remainder, multiple_of, expected", [
    (58, 4, 3, True, 3, 48),    # training: the last incomplete global batch (10 of 12) is dropped
    (61, 4, 2, False, 2, 60),   # validation: one sample left so the last batch splits over 2 devices
    (59, 4, 2, False, 4, 56),   # 2 processes of 2 devices: every batch a multiple of 4
    (10, 4, 2, True, 4, 8),     # fewer images than one global batch of 8: kept, to a multiple of 4
    (23, 4, 1, False, 1, 23),   # one process, one device: every sample, as ever
])
def test_shards_see_each_sample_of_an_epoch_once_and_make_up_the_global_batches(
        size, batch_size, count, drop_remainder, multiple_of, expected):
    images = numbered_images(size)
    for epoch in range(2):
        whole = ImageBatches(images, batch_size * count, shuffle=True, seed=3, drop_remainder=drop_remainder,
                             multiple_of=multiple_of)
        shards = [ImageBatches(images, batch_size, shuffle=True, seed=3, drop_remainder=drop_remainder,
                               shard=(index, count), multiple_of=multiple_of) for index in range(count)]
        for stream in [whole, *shards]:
            stream.set_epoch(epoch)
        assert {len(shard) for shard in shards} == {len(whole)}
        seen = []
        for step in range(len(whole)):
            parts = [samples(shard[step]) for shard in shards]
            assert len({len(part) for part in parts}) == 1            # every process an equal share
            assert len(parts[0]) * count % multiple_of == 0            # which splits over its devices
            assert sum(parts, []) == samples(whole[step])             # in process order: the global batch
            seen += sum(parts, [])
        assert len(seen) == len(set(seen)) == expected
        assert set(seen) <= set(range(size))


def test_shards_that_cannot_split_evenly_are_refused():
    with pytest.raises(ValueError, match="count dividing multiple_of"):
        ImageBatches(numbered_images(8), 2, shard=(0, 2))
    with pytest.raises(ConfigError, match="3 image.* cannot be shared evenly by 4 devices"):
        ImageBatches(numbered_images(3), 2, multiple_of=4)


# Options and errors (this process: TensorFlow with its one CPU device) --------------------------------

def test_devices_option_values():
    assert parse_devices("all") == "all" and parse_devices(" ALL ") == "all"
    assert parse_devices("4") == 4 and parse_devices(2) == 2
    for bad in ("0", "-1", "two", 1.5):
        with pytest.raises(ConfigError, match="'all' or a positive number"):
            parse_devices(bad)
    assert plan(1) is SINGLE and plan("all") is SINGLE  # one CPU device: the plain path


def test_more_devices_than_present_and_other_clusters_are_clear_errors(shape_arrays, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"--devices 3: this machine has 1 CPU device\(s\) \(CPU:0\)"):
        vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", devices=3, **TRAINING)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ConfigError, match=r"TF_CONFIG names several workers.*keras-team/keras#20585.*JAX"):
        vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", **TRAINING)
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("VITKIT_COORDINATOR", "localhost:1234")
    with pytest.raises(ConfigError, match="VITKIT_COORDINATOR joins hosts on the JAX backend"):
        vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", **TRAINING)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("processes, index, message", [
    ("2", "2", "VITKIT_PROCESS_ID=2 must be below VITKIT_NUM_PROCESSES=2"),
    ("two", "0", "VITKIT_NUM_PROCESSES must be a whole number >= 1; got 'two'"),
    ("2", "", "VITKIT_PROCESS_ID must be a whole number >= 0; got ''"),
])
def test_a_malformed_jax_cluster_environment_is_a_clear_error(processes, index, message, monkeypatch):
    from vitkit.training.parallel import _join_jax_cluster

    monkeypatch.setenv("VITKIT_COORDINATOR", "127.0.0.1:9876")
    monkeypatch.setenv("VITKIT_NUM_PROCESSES", processes)
    monkeypatch.setenv("VITKIT_PROCESS_ID", index)
    with pytest.raises(ConfigError, match=message):
        _join_jax_cluster()


def test_command_line_takes_devices_and_explains_the_learning_rate(capsys):
    parser = build_parser()
    assert parser.parse_args(["train", "t.csv", "--out", "m.weights.h5"]).devices == 1
    assert parser.parse_args(["train", "t.csv", "--out", "m.weights.h5", "--devices", "all"]).devices == "all"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "t.csv", "--out", "m.weights.h5", "--devices", "0"])
    assert "'all' or a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size is the global batch" in text
    assert "linear scaling rule" in text and "vitkit does not scale it" in text
    assert "VITKIT_COORDINATOR=HOST0:PORT" in text


# Comparisons --------------------------------------------------------------------------------------

def weights_by_name(path: Path) -> dict[str, np.ndarray]:
    return {w.path: np.asarray(w) for w in vitkit.load_model(path).weights}


def assert_same_model(path: Path, reference: Path, images: np.ndarray, prediction_atol: float = 1e-4) -> None:
    """Same predictions, and the same weights apart from those whose gradient is exactly zero
    (which the predictions follow a little: the heads' BatchNorm moving means track the features)."""
    ours, theirs = weights_by_name(path), weights_by_name(reference)
    assert ours.keys() == theirs.keys()
    compared = [name for name in ours if not any(part in name for part in ZERO_GRADIENT)]
    assert len(compared) > 30
    for name in compared:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-4, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(vitkit.load_model(path).predict(images, verbose=0),
                               vitkit.load_model(reference).predict(images, verbose=0), atol=prediction_atol)


def assert_same_history(history: list[dict], reference: list[dict]) -> None:
    assert [row["epoch"] for row in history] == [row["epoch"] for row in reference]
    for row, expected in zip(history, reference):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            assert float(row[key]) == pytest.approx(float(expected[key]), rel=1e-4, abs=1e-6), key


def read_history(path: Path) -> list[dict]:
    with open(path) as stream:
        return list(csv.DictReader(stream))


# One host, several devices --------------------------------------------------------------------------

_ONE_HOST = """
import json, sys
import numpy as np
{setup}
import keras, vitkit
from vitkit.errors import ConfigError
from vitkit.models.cnn import small_cnn
from vitkit.training.runstate import RunKeeper

data = np.load({data!r})
images = (data["x"], data["y"])
options = json.loads({options!r})
folder = {folder!r}
histories, teacher_seconds = {{}}, {{}}
for devices in {devices!r}:
    result = vitkit.train(images, out=f"{{folder}}/d{{devices}}.weights.h5", devices=devices, **options)
    histories[str(devices)], teacher_seconds[str(devices)] = result.history, result.teacher_seconds
    assert keras.distribution.distribution() is None
    result.model.predict(data["x"][:4], verbose=0)  # the returned model runs outside the distribution

resumed = f"{{folder}}/resumed.weights.h5"
save_epoch = RunKeeper.on_epoch_end
def stop_after_the_first_epoch(self, epoch, logs=None):
    save_epoch(self, epoch, logs)
    if epoch == 0:
        raise KeyboardInterrupt
RunKeeper.on_epoch_end = stop_after_the_first_epoch
try:
    vitkit.train(images, out=resumed, devices={resume_devices!r}, **options)
    raise AssertionError("not interrupted")
except KeyboardInterrupt:
    pass
RunKeeper.on_epoch_end = save_epoch
result = vitkit.train(images, out=resumed, devices={resume_devices!r}, resume=True, **options)
histories["resumed"], teacher_seconds["resumed"] = result.history, result.teacher_seconds

errors = []
for devices, batch_size in {bad_cases!r}:
    try:
        vitkit.train(images, out=f"{{folder}}/never.weights.h5", devices=devices, **dict(options, batch_size=batch_size))
    except ConfigError as error:
        errors.append(str(error))
print("RESULT " + json.dumps({{"histories": histories, "teacher_seconds": teacher_seconds, "errors": errors}}))
"""


def run_one_host(setup: str, devices: list, resume_devices, bad_cases: list, shape_arrays, tmp_path,
                 backend: str, options: dict = TRAINING) -> dict:
    """Train with ``options`` on each of ``devices`` and resume an interrupted run in a new process;
    the histories, the teachers' training times and the errors of ``bad_cases`` ``(devices, batch_size)``."""
    np.savez(tmp_path / "data.npz", x=shape_arrays[0][:48], y=shape_arrays[1][:48])
    code = _ONE_HOST.format(setup=setup, data=str(tmp_path / "data.npz"), options=json.dumps(options),
                            folder=str(tmp_path), devices=devices, resume_devices=resume_devices,
                            bad_cases=bad_cases)
    finished = run_python(code, backend=backend)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout.split("RESULT ", 1)[1])


def jax_setup(devices: int) -> str:
    return textwrap.dedent(f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={devices}"
        from vitkit.device import configure_compilation_cache
        configure_compilation_cache()  # as the command line does: the resumed run reuses the programs
    """)


TENSORFLOW_SETUP = textwrap.dedent("""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""")


@pytest.mark.slow
def test_jax_on_two_and_four_devices_trains_as_on_one_and_resumes(shape_arrays, tmp_path):
    """Straight on 2 devices; on 4, interrupted after the first epoch and resumed."""
    result = run_one_host(jax_setup(4), [1, 2], 4, [(8, 8), (4, 6)], shape_arrays, tmp_path, backend="jax")
    histories = result["histories"]
    for run in ("2", "resumed"):
        assert_same_history(histories[run], histories["1"])
    assert_same_model(tmp_path / "d2.weights.h5", tmp_path / "d1.weights.h5", shape_arrays[0])
    assert_same_model(tmp_path / "resumed.weights.h5", tmp_path / "d1.weights.h5", shape_arrays[0])
    assert not (tmp_path / "resumed.run").exists()
    assert result["errors"] == [
        "--devices 8: this machine has 4 cpu device(s) (cpu:0, cpu:1, cpu:2, cpu:3)",
        "batch size 6 does not split evenly over 4 devices; use a multiple of 4 (e.g. 4 or 8)",
    ]


@pytest.mark.slow
def test_tensorflow_mirrored_strategy_on_all_devices_trains_as_on_one_and_resumes(shape_arrays, tmp_path):
    """Two logical CPU devices; --devices all, interrupted after the first epoch and resumed."""
    result = run_one_host(TENSORFLOW_SETUP, [1], "all", [(3, 8), (2, 7)], shape_arrays, tmp_path, backend="tensorflow")
    assert_same_history(result["histories"]["resumed"], result["histories"]["1"])
    assert_same_model(tmp_path / "resumed.weights.h5", tmp_path / "d1.weights.h5", shape_arrays[0])
    assert result["errors"] == [
        "--devices 3: this machine has 2 CPU device(s) (CPU:0, CPU:1)",
        "batch size 7 does not split evenly over 2 devices; use a multiple of 2 (e.g. 6 or 8)",
    ]


# Distillation ----------------------------------------------------------------------------------------

def assert_same_teacher(path: Path, reference: Path) -> None:
    ours, theirs = keras.saving.load_model(path), keras.saving.load_model(reference)
    assert len(ours.weights) == len(theirs.weights) > 10
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4, err_msg=a.path)


@pytest.mark.slow
def test_jax_distillation_on_two_devices_trains_teacher_and_student_as_on_one_and_resumes(shape_arrays, tmp_path):
    """The CNN teacher, then the student, straight on 2 devices; interrupted after the student's
    first epoch on 2 devices and resumed there, the teacher file loaded onto both devices."""
    result = run_one_host(jax_setup(2), [1, 2], 2, [], shape_arrays, tmp_path, backend="jax",
                          options=dict(TRAINING, teacher="cnn"))
    assert result["teacher_seconds"]["2"] > 0 and result["teacher_seconds"]["resumed"] is None  # reused
    for name in ("d2", "resumed"):
        assert_same_teacher(tmp_path / f"{name}.teacher.keras", tmp_path / "d1.teacher.keras")
        assert_same_model(tmp_path / f"{name}.weights.h5", tmp_path / "d1.weights.h5", shape_arrays[0])
    for run in ("2", "resumed"):
        assert_same_history(result["histories"][run], result["histories"]["1"])
    assert_predicts_the_mean_of_its_heads(tmp_path / "d2.weights.h5", shape_arrays[0])
    assert not (tmp_path / "resumed.run").exists()


@pytest.mark.slow
def test_tensorflow_distillation_from_a_teacher_file_on_all_devices_trains_as_on_one_and_resumes(
        shape_arrays, tmp_path):
    """A teacher file (loaded onto both logical CPU devices); --devices all, interrupted after the
    first epoch and resumed. (The CNN teacher's own augmentation draws per device on TensorFlow.)"""
    teacher = tmp_path / "teacher.keras"
    small_cnn(3, (32, 32), seed=5).save(teacher)
    result = run_one_host(TENSORFLOW_SETUP, [1], "all", [], shape_arrays, tmp_path, backend="tensorflow",
                          options=dict(TRAINING, teacher=str(teacher)))
    assert result["teacher_seconds"] == {"1": None, "resumed": None}
    assert_same_history(result["histories"]["resumed"], result["histories"]["1"])
    # Two heads' moving means follow the encoder's final LayerNorm offset (1e-3 apart here, see the module).
    assert_same_model(tmp_path / "resumed.weights.h5", tmp_path / "d1.weights.h5", shape_arrays[0],
                      prediction_atol=3e-4)
    assert_predicts_the_mean_of_its_heads(tmp_path / "resumed.weights.h5", shape_arrays[0])
