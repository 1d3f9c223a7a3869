"""vitkit: fine-tune Vision Transformers on product photos with Keras, and explain what they look at.

The public API, imported lazily so that ``import vitkit`` (and ``vitkit --help``) does not start a
Keras backend::

    vitkit.build_manifests(photo_dir, out_dir)        # photos -> train/val/test manifests
    vitkit.pretrain(photo_dir, out=...)                # -> models/NAME.backbone.weights.h5 (no classes needed)
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
    "build_model": "vitkit.models.classifier",
    "ImageClassifier": "vitkit.models.classifier",
    "ModelSpec": "vitkit.models.spec",
    "ViTConfig": "vitkit.models.config",
    "PRESETS": "vitkit.models.config",
    "AugmentConfig": "vitkit.data.inputconfig",
    "RECIPES": "vitkit.training.recipes",
    "MixConfig": "vitkit.data.mixing",
    "save_model": "vitkit.models.modelfile",
    "load_model": "vitkit.models.modelfile",
    "convert_weights": "vitkit.models.modelfile",
    "export_model": "vitkit.models.export",
    "read_manifest": "vitkit.data.manifest",
    "build_manifests": "vitkit.data.manifestbuild",
    "check_manifest": "vitkit.data.manifest",
    "load_images": "vitkit.data.imageset",
    "train": "vitkit.training.train",
    "TrainResult": "vitkit.training.train",
    "pretrain": "vitkit.training.pretrain",
    "PretrainResult": "vitkit.training.pretrain",
    "evaluate": "vitkit.evaluation",
    "predict": "vitkit.prediction",
    "explain": "vitkit.explanation.explain",
    "Explanation": "vitkit.explanation.result",
    "attention_rollout": "vitkit.explanation.rollout",
    "gradient_rollout": "vitkit.explanation.rollout",
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
