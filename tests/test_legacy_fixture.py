"""Model files of earlier versions predict what they predicted then.

The original recipe's Keras-2 H5 (TensorFlow 2.15, vit-keras 0.1.2) predicts what Keras 2 predicted.
``seed_tiny_pred.json`` holds Keras 2's softmax outputs for the fixture's twelve 64 px PNGs:
``pred`` for pixels scaled to [-1, 1] (``vit_keras.vit.preprocess_inputs``, x / 127.5 - 1) and
``pred_raw`` for 0-255 floats fed as they are. vitkit reads the PNGs through its own image path
(64 px already, so no resampling) and feeds uint8 to the model, which scales inside.

A vitkit file written while augmentation was made of Keras' preprocessing layers
(``keras_layer_augment/``, every augmentation option on) loads and predicts the same, and that
version's ``Augment`` and ``RandAugmentOps`` layer configs still deserialize.
"""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest
from PIL import Image

import vitkit
from vitkit.data.inputconfig import AugmentConfig
from vitkit.models.modelfile import convert_weights
from vitkit.models.foreign import backbone_shape
from vitkit.models.legacy import read_weights
from vitkit.models.modelfile import read_metadata

from conftest import FIXTURES, run_python

LEGACY = FIXTURES / "legacy_keras2"
WEIGHTS = LEGACY / "seed_tiny.h5"
REFERENCE = json.loads((LEGACY / "seed_tiny_pred.json").read_text())
CLASSES = ["bottle", "can", "carton", "jar", "mug"]
TOLERANCE = 1e-5
EXPECTED = {"tf": np.array(REFERENCE["pred"]), "raw": np.array(REFERENCE["pred_raw"])}


def image_paths() -> list:
    return [LEGACY / name for name in REFERENCE["images"]]


def test_every_dimension_is_read_from_the_file():
    weights = read_weights(WEIGHTS)
    shape = backbone_shape(weights)
    backbone = REFERENCE["backbone"]
    assert weights.format == "legacy-h5"
    assert (shape.patch_size, shape.num_layers, shape.hidden_size, shape.mlp_dim) == (
        backbone["patch_size"], backbone["num_layers"], backbone["hidden_size"], backbone["mlp_dim"])
    assert shape.image_size == REFERENCE["image_size"]
    assert shape.num_heads is None, "query kernels are (width, width): the file does not tell the heads"
    assert [layer.kind for layer in weights.head] == ["batchnorm", "dense", "batchnorm", "dense"]
    model = vitkit.load_model(WEIGHTS, classes=CLASSES, preprocess="tf", num_heads=4)
    assert model.spec.head_width == backbone["head_units"] and model.spec.num_classes == REFERENCE["classes"]


@pytest.mark.parametrize("preprocess", ["tf", "raw"])
def test_predictions_equal_keras2(preprocess, record_property):
    table = vitkit.predict(WEIGHTS, [str(path) for path in image_paths()], classes=CLASSES,
                           preprocess=preprocess, num_heads=4)
    probabilities = table[[f"p_{name}" for name in CLASSES]].to_numpy()
    difference = float(np.abs(probabilities - EXPECTED[preprocess]).max())
    record_property("max_abs_difference", difference)
    print(f"legacy fixture, preprocess {preprocess}: max |difference| {difference:.2e}")
    assert difference < TOLERANCE
    assert list(table["predicted"]) == [CLASSES[i] for i in EXPECTED[preprocess].argmax(axis=1)]


def test_converted_file_keeps_the_choice_and_the_predictions(tmp_path):
    out = convert_weights(WEIGHTS, tmp_path / "old.weights.h5", classes=",".join(CLASSES), preprocess="raw", num_heads=4)
    metadata = read_metadata(out)
    assert metadata["spec"]["preprocess"] == "raw" and metadata["spec"]["class_names"] == CLASSES
    assert metadata["converted_from"]["file"] == "seed_tiny.h5"
    assert metadata["converted_from"]["format"] == "legacy-h5"
    model = vitkit.load_model(out)
    table = vitkit.predict(model, [str(path) for path in image_paths()])
    assert np.abs(table[[f"p_{n}" for n in CLASSES]].to_numpy() - EXPECTED["raw"]).max() < TOLERANCE


def test_class_names_from_a_text_file_or_a_manifest(tmp_path):
    listing = tmp_path / "classes.txt"
    listing.write_text("\n".join(CLASSES) + "\n")
    assert vitkit.load_model(WEIGHTS, classes=listing, preprocess="tf", num_heads=4).class_names == CLASSES
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("base_path,type_dir,file_name\n" + "".join(f"/x,{name},a.png\n" for name in reversed(CLASSES)))
    assert vitkit.load_model(WEIGHTS, classes=manifest, preprocess="tf", num_heads=4).class_names == CLASSES


@pytest.mark.parametrize("missing, message", [
    ({"classes": None}, "--classes"),
    ({"preprocess": None}, "--preprocess tf"),
    ({"num_heads": None}, "--heads N"),
    ({"classes": CLASSES[:3]}, "has 5 classes, but 3 class names were given"),
    ({"num_heads": 5}, "not divisible by 5 heads"),
])
def test_missing_or_wrong_options_say_what_to_pass(missing, message):
    options = {"classes": CLASSES, "preprocess": "tf", "num_heads": 4, **missing}
    with pytest.raises(vitkit.VitkitError, match=message) as error:
        vitkit.load_model(WEIGHTS, **options)
    assert "\n" not in str(error.value)


def test_a_changed_layer_order_in_the_file_changes_nothing(tmp_path):
    """Names, not positions: the head layers listed in another order, and the groups renamed."""
    shuffled = tmp_path / "shuffled.h5"
    with h5py.File(WEIGHTS, "r") as source, h5py.File(shuffled, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        renames = {"dense": "dense_7", "dense_1": "dense_12"}
        names = [n.decode() if isinstance(n, bytes) else n for n in source.attrs["layer_names"]]
        for name in names:
            new = renames.get(name, name)
            group = target.create_group(new)
            weight_names = []
            for weight in source[name].attrs["weight_names"]:
                weight = weight.decode() if isinstance(weight, bytes) else weight
                renamed = weight.replace(f"{name}/", f"{new}/", 1)
                group.create_dataset(renamed, data=source[name][weight][()])
                weight_names.append(renamed.encode())
            group.attrs["weight_names"] = np.array(weight_names)
        target.attrs["layer_names"] = np.array([renames.get(n, n).encode() for n in reversed(names)])
    model = vitkit.load_model(shuffled, classes=CLASSES, preprocess="tf", num_heads=4)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in image_paths()])
    assert np.abs(model.predict(pixels, verbose=0) - EXPECTED["tf"]).max() < TOLERANCE


def test_keras2_backbone_saved_alone(tmp_path):
    """vit-keras 0.1.2's functional backbone saved alone by Keras 2: one group per layer, named
    ``Transformer/encoderblock_0`` (nested groups), the fixture's arrays rewritten in that layout."""
    alone = tmp_path / "backbone.h5"
    with h5py.File(WEIGHTS, "r") as source, h5py.File(alone, "w") as target:
        group = source["vit-b16"]
        layers: dict[str, list[str]] = {}
        for weight in (w.decode() if isinstance(w, bytes) else w for w in group.attrs["weight_names"]):
            parts = weight.split("/")
            layer = "/".join(parts[:2]) if parts[0] == "Transformer" else parts[0]
            layers.setdefault(layer, []).append(weight)
        names = ["input_1", "embedding", "reshape", "class_token", *[n for n in layers if n.startswith("Transformer")],
                 "ExtractToken"]
        for name in names:
            created = target.create_group(name)
            for weight in layers.get(name, []):
                created.create_dataset(weight, data=group[weight][()])
            created.attrs["weight_names"] = np.array([w.encode() for w in layers.get(name, [])], dtype="S")
        target.attrs["layer_names"] = np.array([n.encode() for n in names])
        target.attrs["keras_version"] = b"2.15.0"
    bare = vitkit.load_model(alone, classes=CLASSES, preprocess="tf", num_heads=4, include_top=False)
    whole = vitkit.load_model(WEIGHTS, classes=CLASSES, preprocess="tf", num_heads=4)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype("float32") / 127.5 - 1
    assert np.array_equal(np.asarray(bare.backbone(pixels)), np.asarray(whole.backbone(pixels)))
    with pytest.raises(vitkit.WeightsError, match="without a classifier head"):
        vitkit.load_model(alone, classes=CLASSES, preprocess="tf", num_heads=4)


@pytest.mark.slow
def test_explain_reads_the_old_file_and_predicts_as_keras2():
    from vitkit.explanation.explain import explain

    images = [str(path) for path in image_paths()]
    result = explain(WEIGHTS, images, classes=CLASSES, preprocess="raw", num_heads=4, progress=False)
    probabilities = result.table()[[f"p_{name}" for name in CLASSES]].to_numpy()
    assert np.abs(probabilities - EXPECTED["raw"]).max() < 1e-5
    maps = result.maps()
    assert maps.shape[0] == len(images) and maps.min() >= 0 and maps.max() <= 1


def test_cli_predicts_and_converts_the_old_file(tmp_path, cli):
    images = [str(path) for path in image_paths()]
    status, _, stderr = cli("predict", WEIGHTS, *images, "--classes", ",".join(CLASSES), "--preprocess", "raw",
                            "--heads", "4", "--out", tmp_path / "predictions.csv")
    assert status == 0, stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "predictions.csv")
    assert np.abs(table[[f"p_{n}" for n in CLASSES]].to_numpy() - EXPECTED["raw"]).max() < 1e-5
    status, _, stderr = cli("predict", WEIGHTS, *images)
    assert status == 2
    errors = [line for line in stderr.splitlines() if line.startswith("vitkit: error:")]
    assert len(errors) == 1 and "--preprocess tf" in errors[0]
    out = tmp_path / "models" / "old.weights.h5"
    status, stdout, stderr = cli("weights", "convert", WEIGHTS, "--classes", ",".join(CLASSES), "--preprocess", "tf",
                                 "--heads", "4", "--out", out)
    assert status == 0, stderr
    assert str(out) in stdout and read_metadata(out)["spec"]["preprocess"] == "tf"


# vitkit files from before the fused augmentation -------------------------------------------

KERAS_LAYER_AUGMENT = FIXTURES / "keras_layer_augment"
KERAS_LAYER_EXPECTED = json.loads((KERAS_LAYER_AUGMENT / "expected.json").read_text())


def test_a_file_written_with_keras_layer_augmentation_loads_and_predicts_the_same():
    images = np.load(KERAS_LAYER_AUGMENT / "images.npy")
    model = vitkit.load_model(KERAS_LAYER_AUGMENT / "model.weights.h5")   # fails on any skipped weight
    assert model.spec.augment == AugmentConfig(flip="horizontal", rotation=0.05, zoom=0.1, translation=0.1,
                                               brightness=0.1, contrast=0.1, randaugment_ops=2,
                                               randaugment_magnitude=0.5)
    np.testing.assert_allclose(model.predict(images, verbose=0), KERAS_LAYER_EXPECTED["pred"], atol=1e-5)
    pixels = images.astype("float32")
    augmented = keras.ops.convert_to_numpy(model.get_layer("augment")(pixels, training=True))
    assert augmented.shape == pixels.shape and np.abs(augmented - pixels).reshape(len(pixels), -1).max(1).min() > 0


@pytest.mark.parametrize("name", ["Augment", "RandAugmentOps"])
def test_the_earlier_augmentation_layer_configs_still_deserialize(name):
    serialized = KERAS_LAYER_EXPECTED["layers"][name]
    layer = keras.saving.deserialize_keras_object(serialized)
    assert type(layer).__name__ == name
    config = layer.get_config()
    assert {key: config[key] for key in serialized["config"] if key != "dtype"} == \
        {key: value for key, value in serialized["config"].items() if key != "dtype"}
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(pixels, training=False)), pixels)
    assert not np.allclose(keras.ops.convert_to_numpy(layer(pixels, training=True)), pixels)


@pytest.mark.slow
def test_jax_backend_reproduces_keras2_and_loads_the_file_written_with_keras_layer_augmentation():
    """Both earlier files in one JAX process; the Keras-2 file is read without importing TensorFlow."""
    code = (
        "import json, numpy as np, sys, keras, vitkit\n"
        f"table = vitkit.predict({str(WEIGHTS)!r}, {[str(p) for p in image_paths()]!r}, classes={CLASSES!r},"
        " preprocess='tf', num_heads=4)\n"
        f"p = table[[f'p_{{n}}' for n in {CLASSES!r}]].to_numpy()\n"
        f"print('KERAS2', float(np.abs(p - np.array({REFERENCE['pred']!r})).max()), 'tensorflow' in sys.modules)\n"
        f"folder = {str(KERAS_LAYER_AUGMENT)!r}\n"
        "images = np.load(folder + '/images.npy')\n"
        "model = vitkit.load_model(folder + '/model.weights.h5')\n"
        "expected = np.array(json.load(open(folder + '/expected.json'))['pred'])\n"
        "assert np.abs(model.predict(images, verbose=0) - expected).max() < 1e-5\n"
        "model.compile(optimizer='adam', loss='categorical_crossentropy')\n"
        "assert np.isfinite(model.fit(images, np.eye(3)[[0, 1, 2, 0, 1, 2]], epochs=1, verbose=0).history['loss'][0])\n"
        "print('ok', keras.backend.backend())\n"
    )
    done = run_python(code, backend="jax")
    assert done.returncode == 0, done.stderr[-3000:]
    difference, tensorflow_imported = next(line for line in done.stdout.splitlines() if line.startswith("KERAS2 ")).split()[1:]
    assert float(difference) < TOLERANCE
    assert tensorflow_imported == "False"
    assert "ok jax" in done.stdout
