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
import sys
import types
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
    "train": "vitkit.train",
    "TrainResult": "vitkit.train",
    "evaluate": "vitkit.evaluate",
    "predict": "vitkit.predict",
    "explain": "vitkit.explain",
    "Explanation": "vitkit.explain",
    "attention_rollout": "vitkit.explain",
    "gradient_rollout": "vitkit.explain",
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


class _CallableModule(types.ModuleType):
    """A module named after the function it provides (``vitkit.train``, ``vitkit.evaluate``,
    ``vitkit.predict``): calling the module calls that function.

    Python binds ``vitkit.predict`` to the submodule as soon as anything imports
    ``vitkit.predict``, which would hide the function of the same name (``'module' object is not
    callable``); with this class ``vitkit.predict(...)`` works whatever was imported first, and
    ``import vitkit.predict`` still gives the module.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def _callable_module(module_name: str) -> None:
    """Make the module ``module_name`` a :class:`_CallableModule` (called at its end)."""
    sys.modules[module_name].__class__ = _CallableModule


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitkit' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    if module.__name__ == f"{__name__}.{name}":  # the submodule itself, callable
        return module
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
