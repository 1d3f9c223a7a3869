"""vitkit: fine-tune Vision Transformers on product photos with Keras, and explain what they look at.

The public API, imported lazily so that ``import vitkit`` (and ``vitkit --help``) does not start a
Keras backend::

    vitkit.build_manifests(photo_dir, out_dir)        # photos -> train/val/test manifests
    vitkit.train(train_csv, val_csv, out=...)          # -> models/NAME.weights.h5 (recipe="plain"|"small-data")
    vitkit.load_model(path)                            # -> keras.Model with .class_names
    vitkit.evaluate(model, test_csv, out=...)          # -> metrics and figures
    vitkit.predict(model, images, out=...)             # -> table of predictions
    vitkit.build_model(classes, backbone="vit_b16")    # a fresh model
    vitkit.convert_weights(old_h5, out, classes=...)   # a file of another tool -> a vitkit file
    vitkit.export_model(model, path, "savedmodel")     # .keras, SavedModel or ONNX for serving
    vitkit.explain(model, images, out=...)             # -> attention maps, figures, report
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "build_model": "vitkit.model",
    "ImageClassifier": "vitkit.model",
    "ModelSpec": "vitkit.model",
    "ViTConfig": "vitkit.config",
    "PRESETS": "vitkit.config",
    "AugmentConfig": "vitkit.preprocessing",
    "RECIPES": "vitkit.recipes",
    "MixConfig": "vitkit.mixing",
    "save_model": "vitkit.modelfile",
    "load_model": "vitkit.modelfile",
    "convert_weights": "vitkit.convert",
    "export_model": "vitkit.export",
    "read_manifest": "vitkit.manifest",
    "build_manifests": "vitkit.manifest",
    "check_manifest": "vitkit.manifest",
    "load_images": "vitkit.data",
    "train": "vitkit.training",
    "TrainResult": "vitkit.training",
    "evaluate": "vitkit.evaluation",
    "predict": "vitkit.prediction",
    "explain": "vitkit.explanation",
    "Explanation": "vitkit.explanation",
    "attention_rollout": "vitkit.explanation",
    "gradient_rollout": "vitkit.explanation",
    "VitkitError": "vitkit.errors",
    "ManifestError": "vitkit.errors",
    "ImageError": "vitkit.errors",
    "WeightsError": "vitkit.errors",
    "ConfigError": "vitkit.errors",
    "OutputError": "vitkit.errors",
    "OutputExistsError": "vitkit.errors",
    "ResourceError": "vitkit.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
