"""vitkit's model file: one Keras 3 ``.weights.h5`` with the model's spec stored inside it.

The spec (class names, image size, backbone, head, preprocessing, versions) is a JSON string in
the root attribute ``vitkit``; the rest of the file is exactly what
``keras.Model.save_weights`` writes, so the weights also load into ``vitkit.build_model(...)``
with plain ``model.load_weights``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import keras

from vitkit.errors import WeightsError
from vitkit.fileio import atomic_output
from vitkit.model import ImageClassifier, ModelSpec

FORMAT_NAME = "vitkit"
FORMAT_VERSION = 1
SUFFIX = ".weights.h5"


def _versions() -> dict[str, str]:
    from vitkit import __version__

    return {"vitkit": __version__, "keras": keras.__version__, "backend": keras.backend.backend()}


def save_model(model: ImageClassifier, path: str | os.PathLike, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` (must end in ``.weights.h5``) atomically.

    Args:
        model: a classifier from :func:`vitkit.build_model` or :func:`vitkit.load_model`.
        path: destination file.
        overwrite: replace an existing file; otherwise an existing file is an error.
        extra: more JSON-serializable metadata to keep (training options, metrics).
    """
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise WeightsError(f"model files end in {SUFFIX}; got {path}")
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "spec": model.spec.to_dict(),
        "versions": _versions(),
        **(extra or {}),
    }
    with atomic_output(path, overwrite=overwrite, suffix=SUFFIX) as temporary:
        model.save_weights(temporary, overwrite=True)
        with h5py.File(temporary, "a") as handle:
            handle.attrs[FORMAT_NAME] = json.dumps(metadata)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The vitkit metadata of a model file, or None for an H5 file without it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model file {path} not found")
    try:
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get(FORMAT_NAME)
    except OSError as error:
        raise WeightsError(f"{path} is not a readable HDF5 weights file ({error})") from None
    if raw is None:
        return None
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path}: its vitkit metadata is damaged ({error})") from None
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise WeightsError(
            f"{path} was written by a newer vitkit (format {metadata['format_version']}); upgrade vitkit"
        )
    return metadata


def is_model_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a vitkit model file (HDF5 with vitkit metadata), not a file of another tool."""
    from vitkit.legacy import file_kind

    return file_kind(path) == "hdf5" and read_metadata(path) is not None


def load_model(
    path: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    preprocess: str | None = None,
    **foreign_options: Any,
) -> ImageClassifier:
    """Rebuild a classifier from a model file alone, on the current Keras backend.

    Files of other tools (Flax ``.npz`` checkpoints, vit-keras ``.weights.h5`` / ``.h5``, the
    original recipe's Keras-2 ``.h5``) load too, with what they do not record given here:
    ``classes`` and ``preprocess`` (see :func:`vitkit.convert.load_foreign`, which also takes
    ``include_top``, ``num_heads`` and ``image_size``). A vitkit file records both; options
    that contradict it are an error.

    Example:
        >>> model = vitkit.load_model("models/products.weights.h5")
        >>> model.class_names
        ['bottle', 'can', 'carton', 'mug']
        >>> old = vitkit.load_model("old/recipe.h5", classes=["a", "b", "c"], preprocess="raw")
    """
    if not is_model_file(path):
        from vitkit.convert import load_foreign

        return load_foreign(path, classes=classes, preprocess=preprocess, **foreign_options)
    metadata = read_metadata(path)
    model = ImageClassifier(ModelSpec.from_dict(metadata["spec"]))
    _check_agrees(path, model.spec, classes, preprocess, foreign_options)
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        raise WeightsError(f"{path}: weights do not match the model described in the file ({error})") from None
    return model


def _check_agrees(path, spec: ModelSpec, classes, preprocess: str | None, foreign_options: dict[str, Any]) -> None:
    """Options given for a vitkit file must say what the file says."""
    given = {key: value for key, value in foreign_options.items() if value is not None}
    if given:
        raise WeightsError(f"{path} is a vitkit model file; {', '.join(sorted(given))} apply only to files of other tools")
    if preprocess is not None and preprocess != spec.preprocess:
        raise WeightsError(f"{path} was made with preprocess {spec.preprocess!r}; drop preprocess={preprocess!r}")
    if classes is not None:
        from vitkit.convert import class_names_from

        if class_names_from(classes) != list(spec.class_names):
            raise WeightsError(
                f"{path} names its classes {list(spec.class_names)}; classes= is only for files of other tools"
            )
