"""vitkit's model file: one Keras 3 ``.weights.h5`` with the model's spec stored inside it.

The spec (class names, image size, backbone, head, preprocessing, versions) is a JSON string in
the root attribute ``vitkit``; the rest of the file is exactly what
``keras.Model.save_weights`` writes, so the weights also load into ``vitkit.build_model(...)``
with plain ``model.load_weights``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import h5py
import keras

from vitkit.errors import VitkitError, WeightsError
from vitkit.fileio import atomic_output, check_writable
from vitkit.models.convert import build_from_weights, class_names_from, load_foreign
from vitkit.models.legacy import file_kind, read_weights
from vitkit.models.sources import is_timm_checkpoint
from vitkit.models.weights import sha256_of
from vitkit.models.classifier import ImageClassifier, ModelSpec

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
        _save_weights_only(model, temporary)
        with h5py.File(temporary, "a") as handle:
            handle.attrs[FORMAT_NAME] = json.dumps(metadata)
    return path


def _save_weights_only(model: keras.Model, path: Path) -> None:
    """``save_weights`` without the optimizer a compiled model would add (twice the weights for Adam)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        model.save_weights(path, overwrite=True)
    else:
        keras.saving.save_weights(model, path, overwrite=True, objects_to_skip=[optimizer])


def load_weights_only(model: keras.Model, path: str | os.PathLike) -> None:
    """``load_weights`` of a file written by :func:`save_model`, leaving a compiled model's optimizer alone."""
    optimizer = getattr(model, "optimizer", None)
    model.load_weights(path, **({"objects_to_skip": [optimizer]} if optimizer is not None else {}))


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
    if is_timm_checkpoint(path):
        return False
    return file_kind(path) == "hdf5" and read_metadata(path) is not None


def load_model(
    path: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    preprocess: str | None = None,
    **foreign_options: Any,
) -> ImageClassifier:
    """Rebuild a classifier from a model file alone, on the current Keras backend.

    Files of other tools (Flax ``.npz`` checkpoints, vit-keras ``.weights.h5`` / ``.h5``, the
    original recipe's Keras-2 ``.h5``, timm ``.safetensors`` checkpoints and ``hf-hub:ORG/NAME``)
    load too, with what they do not record given here: ``classes`` and ``preprocess`` (see
    :func:`vitkit.models.convert.load_foreign`, which also takes ``include_top``, ``num_heads``,
    ``image_size`` and ``architecture``). A vitkit file records both; options that contradict it
    are an error.

    Example:
        >>> model = vitkit.load_model("models/products.weights.h5")
        >>> model.class_names
        ['bottle', 'can', 'carton', 'mug']
        >>> old = vitkit.load_model("old/recipe.h5", classes=["a", "b", "c"], preprocess="raw")
    """
    if not is_model_file(path):
        return load_foreign(path, classes=classes, preprocess=preprocess, **foreign_options)
    metadata = read_metadata(path)
    try:
        spec = ModelSpec.from_dict(metadata["spec"])
    except (KeyError, TypeError, ValueError, VitkitError) as error:
        raise WeightsError(f"{path}: its vitkit metadata does not describe a model ({error})") from None
    _check_agrees(path, spec, classes, preprocess, foreign_options)
    model = ImageClassifier(spec)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise _mismatch(path, _first_line(error)) from None
    # Keras loads what it finds and only warns about parts it skipped; a model with some
    # layers left at their random start must not pass for the trained one.
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
    if skipped:
        raise _mismatch(path, skipped[0].splitlines()[0])
    for other in caught:
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    return model


def _mismatch(path: str | os.PathLike, detail: str) -> WeightsError:
    return WeightsError(
        f"{path}: weights do not match the model described in the file, or the file is damaged ({detail})"
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_agrees(path, spec: ModelSpec, classes, preprocess: str | None, foreign_options: dict[str, Any]) -> None:
    """Options given for a vitkit file must say what the file says."""
    given = {key: value for key, value in foreign_options.items() if value is not None}
    if given:
        raise WeightsError(f"{path} is a vitkit model file; {', '.join(sorted(given))} apply only to files of other tools")
    if preprocess is not None and preprocess != spec.preprocess:
        raise WeightsError(f"{path} was made with preprocess {spec.preprocess!r}; drop preprocess={preprocess!r}")
    if classes is not None:
        if class_names_from(classes) != list(spec.class_names):
            raise WeightsError(
                f"{path} names its classes {list(spec.class_names)}; classes= is only for files of other tools"
            )


def convert_weights(
    path: str | os.PathLike,
    out: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    preprocess: str | None = None,
    include_top: bool | None = None,
    num_heads: int | None = None,
    image_size: int | Sequence[int] | None = None,
    overwrite: bool = False,
    architecture: str | None = None,
) -> Path:
    """Convert a foreign weights file into a vitkit model file (``.weights.h5`` with metadata).

    The metadata records where the weights came from (file name, format, SHA-256) and the
    preprocessing chosen, so the converted file loads with ``vitkit.load_model(out)`` alone.

    Example:
        >>> convert_weights("old/model.h5", "models/old.weights.h5", classes="bottle,can,mug", preprocess="tf")
    """
    check_writable(out, overwrite)
    if is_timm_checkpoint(path):
        model = load_foreign(path, classes, preprocess, include_top, num_heads, image_size, architecture)
        source = {"file": str(path), "format": "timm-safetensors"}
    else:
        weights = read_weights(path)
        model = build_from_weights(weights, classes, preprocess, include_top, num_heads, image_size)
        source = {"file": Path(path).name, "format": weights.format, "sha256": sha256_of(Path(path))}
    return save_model(model, out, overwrite=overwrite, extra={"converted_from": source})
