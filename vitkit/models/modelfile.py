"""vitkit's model file: one Keras 3 ``.weights.h5`` with the model's spec stored inside it.

The spec (class names, image size, backbone, head, preprocessing, versions) is a JSON string in
the root attribute ``vitkit``; the rest of the file is exactly what
``keras.Model.save_weights`` writes, so the weights also load into ``vitkit.build_model(...)``
with plain ``model.load_weights``.

Writing goes through a copy of the weights in host memory (:class:`ModelSnapshot`, taken with
Keras' own walk over the model), so a checkpoint can be written while the model trains on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
import weakref
from pathlib import Path
from typing import Any, Sequence

import h5py
import keras
import numpy as np
from keras.src.saving.saving_lib import H5IOStore, _save_state

from vitkit.errors import VitkitError, WeightsError, first_line
from vitkit.fileio import atomic_output, check_writable
from vitkit.models.backbonefile import BACKBONE_FORMAT, software_versions
from vitkit.models.h5layout import H5Group, write_h5
from vitkit.models.convert import build_from_weights, class_names_from, load_foreign
from vitkit.models.legacy import file_kind, read_weights
from vitkit.models.sources import is_timm_checkpoint
from vitkit.models.weights import sha256_of
from vitkit.models.classifier import ImageClassifier
from vitkit.models.spec import ModelSpec
from vitkit.models.initialvalues import initial_values_skipped

FORMAT_NAME = "vitkit"
FORMAT_VERSION = 1
SUFFIX = ".weights.h5"


def save_model(model: ImageClassifier, path: str | os.PathLike, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` (must end in ``.weights.h5``) atomically.

    Args:
        model: a classifier from :func:`vitkit.build_model` or :func:`vitkit.load_model`.
        path: destination file.
        overwrite: replace an existing file; otherwise an existing file is an error.
        extra: more JSON-serializable metadata to keep (training options, metrics).
    """
    return write_snapshot(snapshot_model(model), path, overwrite, extra)


@dataclasses.dataclass(frozen=True)
class ModelSnapshot:
    """A model's weights at one moment, in the groups ``save_weights`` writes, and its spec.

    Taking one (:func:`snapshot_model`) copies the variables where they live (an accelerator's
    copy is one quick kernel per variable); writing it (:func:`write_snapshot`) brings the copies
    to host memory and touches nothing else, so it may happen in another thread while the model
    trains on.
    """

    spec: dict[str, Any]
    groups: tuple[tuple[str, dict[str, Any] | None, dict[str, Any]], ...]


def snapshot_model(model: ImageClassifier) -> ModelSnapshot:
    """Copy ``model``'s weights, leaving out a compiled model's optimizer."""
    if not model.built:
        raise WeightsError("the model is not built yet; call it on a batch first")
    groups = tuple((group, metadata, {key: detached_copy(value) for key, value in values.items()})
                   for group, metadata, values in weight_groups(model))
    return ModelSnapshot(model.spec.to_dict(), groups)


def detached_copy(value: Any) -> Any:
    """A copy of a variable's value, on its device, that later updates of the variable leave alone."""
    return keras.ops.copy(value.value if isinstance(value, keras.Variable) else value)


def host_array(value: Any) -> np.ndarray:
    """``value`` in host memory, as an array that shares memory with nothing a model updates."""
    array = keras.ops.convert_to_numpy(value)
    return array if array.flags.owndata else array.copy()


# Keras' walk over a model costs about as much as copying its weights (it builds throw-away
# layers to know which attributes to skip), so where it puts each variable is kept per model.
_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weight_groups(model: keras.Model) -> list[tuple[str, dict[str, Any] | None, dict[str, Any]]]:
    """What ``save_weights`` writes of ``model``: ``(group, group metadata, {name: variable or value})``."""
    weights = [id(variable) for variable in model.weights]
    cached = _LAYOUTS.get(model)
    if cached is not None and cached[0] == weights:
        return cached[1]
    recorder = _Recorder()
    optimizer = getattr(model, "optimizer", None)
    # Keras' own walk, as save_weights does it: the same groups, names and order.
    _save_state(model, recorder, None, "", set() if optimizer is None else {id(optimizer)})
    # Only variables are read afresh on each snapshot; a layer that hands out computed values
    # is walked each time. The layout holds the variables, so their ids are not reused.
    if all(isinstance(value, keras.Variable) for _, _, values in recorder.groups for value in values.values()):
        _LAYOUTS[model] = (weights, recorder.groups)
    return recorder.groups


def write_snapshot(snapshot: ModelSnapshot, path: str | os.PathLike, overwrite: bool = False,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write a snapshot as a model file (what :func:`save_model` writes), atomically."""
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        raise WeightsError(f"model files end in {SUFFIX}; got {path}")
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "spec": snapshot.spec,
        "versions": software_versions(),
        **(extra or {}),
    }
    with atomic_output(path, overwrite=overwrite, suffix=SUFFIX) as temporary:
        write_h5(temporary, _h5_groups(snapshot), {FORMAT_NAME: json.dumps(metadata)})
    return path


def _h5_groups(snapshot: ModelSnapshot) -> list[H5Group]:
    """The groups Keras' ``H5IOStore`` writes: ``PATH/vars`` holds the arrays and the metadata;
    a group with neither is left out."""
    groups = []
    for group, metadata, values in snapshot.groups:
        if not values and not metadata:
            continue
        arrays = {key: host_array(value) for key, value in values.items()}
        bfloat16 = {key: {"dtype": "bfloat16"} for key, array in arrays.items()
                    if keras.backend.standardize_dtype(array.dtype) == "bfloat16"}
        groups.append(H5Group(f"{group}/vars" if group else "vars", metadata or {}, arrays, bfloat16))
    return groups


def copy_model(source: str | os.PathLike, path: str | os.PathLike, overwrite: bool = False,
               extra: dict[str, Any] | None = None) -> Path:
    """Copy a vitkit model file to ``path`` atomically, adding ``extra`` to its metadata.

    Raises:
        WeightsError: ``source`` is missing, unreadable or not a vitkit model file.
    """
    metadata = read_metadata(source)
    if metadata is None:
        raise WeightsError(f"{source} is not a vitkit model file")
    with atomic_output(path, overwrite=overwrite, suffix=SUFFIX) as temporary:
        shutil.copyfile(source, temporary)
        _write_metadata(temporary, {**metadata, **(extra or {})})
    return Path(path)


def _write_metadata(path: Path, metadata: dict[str, Any]) -> None:
    with h5py.File(path, "a") as handle:
        handle.attrs[FORMAT_NAME] = json.dumps(metadata)


class _Recorder(H5IOStore):
    """Takes what Keras' weight saving hands an H5 store instead of writing it."""

    def __init__(self):  # no file
        self.groups: list[tuple[str, dict[str, Any] | None, dict[str, Any]]] = []

    def __bool__(self):
        return True

    def make(self, path, metadata=None):
        self.groups.append((path, metadata, {}))
        return self

    def __setitem__(self, key, value):
        self.groups[-1][2][key] = value

    def close(self):
        pass


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
    if metadata.get("format") == BACKBONE_FORMAT:
        raise WeightsError(f"{path} is a pre-trained backbone (from vitkit pretrain), not a classifier: fine-tune "
                           f"it with `vitkit train DATA --weights {path} --out models/NAME.weights.h5`")
    try:
        spec = ModelSpec.from_dict(metadata["spec"])
    except (KeyError, TypeError, ValueError, VitkitError) as error:
        raise WeightsError(f"{path}: its vitkit metadata does not describe a model ({error})") from None
    _check_agrees(path, spec, classes, preprocess, foreign_options)
    with initial_values_skipped():
        model = ImageClassifier(spec)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
    except (ValueError, KeyError, OSError, TypeError) as error:
        raise _mismatch(path, first_line(error)) from None
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
