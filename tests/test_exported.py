"""A model file's forward pass exported and kept (JAX backend): the same probabilities as the Keras
model, found again only for the same file, and a second `vitkit predict` that needs no Keras."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_BACKBONE, make_photo_tree, run_cli, run_python

API_CHECKS = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import numpy as np
    os.environ["JAX_COMPILATION_CACHE_DIR"] = sys.argv[1] + "/cache"
    import vitkit
    from vitkit.models.exported import ExportedPredictor, load_exported
    from vitkit.prediction import as_predictor, predict_probabilities
    from vitkit.data.imageset import load_images

    path = sys.argv[1] + "/m.weights.h5"
    def model(seed, **options):
        built = vitkit.build_model(["a", "b", "c"], backbone=BACKBONE, image_size=32, augment=True,
                                   seed=seed, **options)
        vitkit.save_model(built, path, overwrite=True)
        return built
    images = load_images(np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), (32, 32))
    report = {}
    for name, options in [("plain", {}), ("distilled, raw", {"distillation_token": True, "preprocess": "raw", "head_width": 0})]:
        keras_model = model(1, **options)
        expected = keras_model.predict(images.all_pixels(), verbose=0)
        exported = as_predictor(path)
        kept = load_exported(path, "float32")
        report[name] = {
            "exported": type(exported).__name__, "kept": type(kept).__name__,
            "exported_error": float(np.abs(predict_probabilities(exported, images, batch_size=2) - expected).max()),
            "kept_error": float(np.abs(predict_probabilities(kept, images, batch_size=2) - expected).max()),
            "kept_one_batch_error": float(np.abs(predict_probabilities(kept, images, batch_size=8) - expected).max()),
        }
    replaced = model(2)
    report["after the file is replaced"] = type(load_exported(path, "float32")).__name__
    report["other precision"] = type(load_exported(path, "mixed_bfloat16")).__name__
    again = as_predictor(path)
    expected = replaced.predict(images.all_pixels(), verbose=0)
    report["replaced_error"] = float(np.abs(predict_probabilities(again, images) - expected).max())
    from vitkit.models.exported import _model_key
    record_path = Path(sys.argv[1]) / "cache" / "programs" / (_model_key(path, "float32") + ".json")
    record = json.loads(record_path.read_text())
    record["weights"][0][0] += "-gone"  # a record that names what the file does not hold
    record_path.write_text(json.dumps(record))
    stale = load_exported(path, "float32")
    report["stale_record_error"] = float(np.abs(predict_probabilities(stale, images) - expected).max())
    report["stale_record_loaded_keras"] = stale.model is not None
    import jax
    on_this_cpu = jax.default_backend
    jax.default_backend = lambda: "gpu"  # an accelerator's rule, on this CPU: the program of the whole batch
    report["padded_error"] = float(np.abs(predict_probabilities(load_exported(path, "float32"), images, batch_size=8) - expected).max())
    one = load_exported(path, "float32")
    report["padded_one_error"] = float(np.abs(predict_probabilities(one, images.subset([3]), batch_size=8) - expected[3:4]).max())
    report["padded_one_loaded_keras"] = one.model is not None
    os.environ["JAX_COMPILATION_CACHE_DIR"] = sys.argv[1] + "/gpu-cache"  # nothing kept: exported while the images load
    table = vitkit.predict(path, images.all_pixels(), batch_size=4)
    report["while_loading_error"] = float(np.abs(table[["p_a", "p_b", "p_c"]].to_numpy() - expected).max())
    report["while_loading_programs"] = sorted(p.name.split("-", 1)[1] for p in (Path(sys.argv[1]) / "gpu-cache" / "programs").glob("*.program"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = sys.argv[1] + "/cache"
    jax.default_backend = on_this_cpu
    report["programs"] = sorted(p.name.split("-", 1)[1] for p in (Path(sys.argv[1]) / "cache" / "programs").glob("*.program"))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = sys.argv[1] + "/other-cache"
    import warnings
    from vitkit.models import exported as exported_module
    def refuse(*args):
        raise ValueError("Cannot serialize code with custom calls\\nmore detail")
    exported_module._export_forward = refuse
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused = predict_probabilities(as_predictor(path), images)
    report["refused_error"] = float(np.abs(refused - replaced.predict(images.all_pixels(), verbose=0)).max())
    report["refused_warnings"] = [str(w.message) for w in caught]
    os.environ["JAX_COMPILATION_CACHE_DIR"] = sys.argv[1] + "/refused-gpu-cache"
    jax.default_backend = lambda: "gpu"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = vitkit.predict(path, images.all_pixels(), batch_size=4)
    jax.default_backend = on_this_cpu
    report["refused_while_loading_error"] = float(np.abs(table[["p_a", "p_b", "p_c"]].to_numpy() - expected).max())
    report["refused_while_loading_warnings"] = len([w for w in caught if "without keeping" in str(w.message)])
    del os.environ["JAX_COMPILATION_CACHE_DIR"]
    report["without a cache folder"] = type(as_predictor(path)).__name__
    print("REPORT " + json.dumps(report))
""").replace("BACKBONE", repr(dict(TINY_BACKBONE)))


def test_exported_forward_pass_predicts_what_the_keras_model_does(tmp_path):
    done = run_python(API_CHECKS.replace("sys.argv[1]", repr(str(tmp_path))), backend="jax")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("REPORT "))[7:])
    for name in ("plain", "distilled, raw"):
        assert report[name]["exported"] == "ExportedPredictor"
        assert report[name]["kept"] == "ExportedPredictor"
        for error in ("exported_error", "kept_error", "kept_one_batch_error"):
            assert report[name][error] < 1e-6, (name, error, report[name][error])
    assert report["after the file is replaced"] == "NoneType"
    assert report["other precision"] == "NoneType"
    assert report["replaced_error"] < 1e-6
    assert report["stale_record_error"] < 1e-6 and report["stale_record_loaded_keras"]
    # on an accelerator a set smaller than the batch is padded, so one program serves every run
    assert report["padded_error"] < 1e-6 and report["padded_one_error"] < 1e-6
    assert not report["padded_one_loaded_keras"]
    assert "gpu-8.program" in report["programs"] and "cpu-5.program" in report["programs"]
    assert "gpu-5.program" not in report["programs"] and "gpu-1.program" not in report["programs"]
    assert report["while_loading_error"] < 1e-6 and report["while_loading_programs"] == ["gpu-4.program"]
    assert report["refused_error"] < 1e-6
    assert any("predicting without keeping the compiled program (Cannot serialize code with custom calls)" in w
               for w in report["refused_warnings"]), report["refused_warnings"]
    assert report["without a cache folder"] == "ImageClassifier"
    assert report["refused_while_loading_error"] < 1e-6 and report["refused_while_loading_warnings"] == 1


def test_weights_are_mapped_or_read_and_checked_against_the_record(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    from vitkit.models import exported
    from vitkit.models.exported import _read_weights

    rng = np.random.default_rng(0)
    contiguous, chunked = rng.normal(size=(40, 3)).astype("float32"), rng.normal(size=(64, 8)).astype("float32")
    small = np.arange(3, dtype="int32")
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as handle:
        handle["a/vars/0"] = contiguous
        handle.create_dataset("b/vars/0", data=chunked, chunks=(16, 8), compression="gzip")
        handle["vars/0"] = small
    datasets = [["a/vars/0", [40, 3], "float32"], ["b/vars/0", [64, 8], "float32"], ["vars/0", [3], "int32"]]
    mapped = _read_weights(path, datasets)
    monkeypatch.setattr(exported, "_mapped", lambda path: None)  # a file system that cannot map files
    for arrays in (mapped, _read_weights(path, datasets)):
        for read, written in zip(arrays, (contiguous, chunked, small), strict=True):
            np.testing.assert_array_equal(np.asarray(read), written)
            assert np.asarray(read).dtype == written.dtype
    assert _read_weights(path, [["a/vars/0", [3, 40], "float32"]]) is None  # another layout
    assert _read_weights(path, [["a/vars/0", [40, 3], "float16"]]) is None
    assert _read_weights(path, [["c/vars/0", [1], "float32"]]) is None
    assert _read_weights(tmp_path / "gone.h5", datasets) is None


NO_KERAS = textwrap.dedent("""
    import sys
    sys.modules["keras"] = sys.modules["tensorflow"] = None  # importing either now fails
    from vitkit.cli import main
    sys.exit(max(main(command) for command in COMMANDS))
""")


def test_predict_takes_jax_by_itself_and_its_second_run_and_evaluate_run_without_keras(tmp_path):
    photos = make_photo_tree(tmp_path / "photos", per_class=2, size=40)
    model = tmp_path / "m.weights.h5"
    done = run_python(
        "import vitkit; vitkit.save_model(vitkit.build_model(['circle', 'square', 'triangle'], "
        f"backbone={dict(TINY_BACKBONE)!r}, image_size=32, augment=False), {str(model)!r})")
    assert done.returncode == 0, done.stderr[-2000:]
    env = {"VITKIT_COMPILE_CACHE": str(tmp_path / "cache")}
    no_backend_named = {**env, "KERAS_BACKEND": "", "KERAS_HOME": str(tmp_path / "keras-home")}
    first = run_cli("predict", str(model), str(photos), "--out", str(tmp_path / "first.csv"), env=no_backend_named)
    assert first.returncode == 0, first.stderr[-2000:]
    assert list((tmp_path / "cache" / "programs").glob("*.program"))
    commands = [["--backend", "jax", "predict", str(model), str(photos), "--out", str(tmp_path / "second.csv")],
                ["--backend", "jax", "evaluate", str(model), str(photos), "--out", str(tmp_path / "report")]]
    second = run_python(NO_KERAS.replace("COMMANDS", repr(commands)), env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    first_table, second_table = pd.read_csv(tmp_path / "first.csv"), pd.read_csv(tmp_path / "second.csv")
    pd.testing.assert_frame_equal(first_table, second_table)
    assert len(second_table) == 6
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["images"] == 6 and metrics["accuracy"] == pytest.approx(first_table["correct"].mean())

