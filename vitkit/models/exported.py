"""A model file's forward pass kept on disk, so that a later process predicts without Keras.

On the JAX backend, the first prediction from a model file exports the model's forward pass
with ``jax.export`` (StableHLO taking the weights as arguments, for any batch size) into
``programs/`` of the compilation cache folder (:func:`vitkit.device.configure_compilation_cache`).
A later process finds the program by the file's identity (path, size, modification time), the
precision and the software versions, reads the weights from the file with h5py and runs the
program, which JAX's persistent cache keeps compiled: it imports neither Keras nor builds the
model, and traces nothing. Turning the compilation cache off turns this off too.

Only this module's callers import Keras, and only where no program is kept yet.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import h5py
import numpy as np

from vitkit import __version__
from vitkit.data.imageset import ImageSet
from vitkit.fileio import atomic_output
from vitkit.models.spec import ModelSpec

if TYPE_CHECKING:
    from vitkit.models.classifier import ImageClassifier

PROGRAMS_FOLDER = "programs"
# Programs of model files that changed or went stay behind; the oldest beyond this are removed.
KEPT_PROGRAMS = 32


@dataclasses.dataclass(frozen=True, eq=False)
class ExportedPredictor:
    """A model file's forward pass as an exported JAX program and the weights it takes.

    ``spec`` is the file's :class:`~vitkit.models.spec.ModelSpec`; :meth:`probabilities` gives
    what the Keras model's ``predict`` gives for the same images.
    """

    spec: ModelSpec
    program: Any  # jax.export.Exported
    weights: tuple[Any, ...]  # on the device, in the program's argument order

    @functools.cached_property
    def _run(self) -> Callable[..., Any]:
        import jax

        return jax.jit(self.program.call)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    def probabilities(self, images: ImageSet, batch_size: int) -> np.ndarray:
        """``(n, classes)`` probabilities, in batches of ``batch_size`` (the last one padded, so one
        compiled shape serves the whole set)."""
        size = min(batch_size, len(images))
        outputs = [self._run(self.weights, pixels) for pixels in _padded_batches(images, size)]
        probabilities = np.concatenate([np.asarray(output) for output in outputs])
        return probabilities[:len(images)].astype(np.float32, copy=False)


def _padded_batches(images: ImageSet, size: int, read_ahead: int = 2) -> Iterator[np.ndarray]:
    """``images`` in batches of ``size``, the last padded with black images; the next
    ``read_ahead`` batches are read in threads while the current one is computed."""
    starts = range(0, len(images), size)

    def read(start: int) -> np.ndarray:
        pixels = images.read(np.arange(start, min(start + size, len(images))))
        if len(pixels) < size:
            pixels = np.concatenate([pixels, np.zeros((size - len(pixels), *pixels.shape[1:]), pixels.dtype)])
        return pixels

    with ThreadPoolExecutor(read_ahead, thread_name_prefix="vitkit-read") as pool:
        pending = collections.deque(pool.submit(read, start) for start in starts[:read_ahead])
        for later in starts[read_ahead:]:
            yield pending.popleft().result()
            pending.append(pool.submit(read, later))
        while pending:
            yield pending.popleft().result()


def programs_folder() -> Path | None:
    """Where programs are kept: ``programs/`` in JAX's compilation cache folder; None without one."""
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    return Path(cache) / PROGRAMS_FOLDER if cache else None


def load_exported(path: str | os.PathLike, precision: str) -> ExportedPredictor | None:
    """The kept program of model file ``path`` at ``precision``, or None where there is none
    (or it no longer fits the file)."""
    folder = programs_folder()
    if folder is None:
        return None
    try:
        key = _program_key(path, precision)
        record = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        serialized = (folder / f"{key}.program").read_bytes()
    except (OSError, ValueError):
        return None
    from jax import export

    program = export.deserialize(bytearray(serialized))
    weights = _read_weights(path, record["weights"], program.in_avals[:len(record["weights"])])
    if weights is None:
        return None
    return ExportedPredictor(ModelSpec.from_dict(record["spec"]), program, weights)


def export_predictor(model: ImageClassifier, path: str | os.PathLike, precision: str) -> ExportedPredictor:
    """Export ``model``, loaded from model file ``path`` at ``precision``, and keep the program
    (where a compilation cache folder is set) for :func:`load_exported`."""
    import jax
    from jax import export

    dataset_of = _dataset_paths(model)
    arguments = [variable for variable in model.weights if id(variable) in dataset_of]
    position = {id(variable): index for index, variable in enumerate(arguments)}

    def forward(weights, images):
        def values(variables):  # variables the file lacks (random-number states) stay constants
            return [weights[position[id(v)]] if id(v) in position else v.value for v in variables]

        outputs, _ = model.stateless_call(values(model.trainable_variables), values(model.non_trainable_variables),
                                          images, training=False)
        return outputs

    batch, = export.symbolic_shape("batch")
    height, width = model.spec.image_size
    # Custom calls (cuDNN's fused attention) are not guaranteed stable across jaxlib versions;
    # a program is only read again by the versions that made it (its key), so all are allowed.
    program = export.export(jax.jit(forward), disabled_checks=[export.DisabledSafetyCheck.custom_call("ALL")])(
        tuple(jax.ShapeDtypeStruct(variable.shape, variable.dtype) for variable in arguments),
        jax.ShapeDtypeStruct((batch, height, width, 3), "uint8"),
    )
    folder = programs_folder()
    if folder is not None:
        record = {"spec": model.spec.to_dict(), "weights": [dataset_of[id(v)] for v in arguments]}
        _keep(folder, _program_key(path, precision), program.serialize(), record)
    return ExportedPredictor(model.spec, program, tuple(jax.device_put([v.value for v in arguments])))


def _dataset_paths(model: ImageClassifier) -> dict[int, str]:
    """The HDF5 dataset of each variable (by ``id``) in the file ``save_model`` writes of ``model``."""
    from vitkit.models.modelfile import weight_groups

    return {id(variable): f"{group}/vars/{name}" if group else f"vars/{name}"
            for group, _, variables in weight_groups(model) for name, variable in variables.items()}


def _read_weights(path: str | os.PathLike, datasets: list[str], expected) -> tuple[Any, ...] | None:
    """The arrays of ``datasets``, on the device; None where one is missing or differs from the
    program's argument (the file was replaced by one of another layout)."""
    import jax

    arrays = []
    try:
        with h5py.File(path, "r") as handle:
            for name, aval in zip(datasets, expected):
                dataset = handle.get(name)
                if dataset is None or dataset.shape != aval.shape or dataset.dtype != np.dtype(aval.dtype):
                    return None
                arrays.append(dataset[()])
    except OSError:
        return None
    return tuple(jax.device_put(arrays))


def _program_key(path: str | os.PathLike, precision: str) -> str:
    """What a kept program depends on: the file as it is now, the precision, the device kind
    and every version that shapes the program, hashed."""
    import jax

    status = Path(path).stat()
    identity = {
        "file": str(Path(path).resolve()), "size": status.st_size, "modified": status.st_mtime_ns,
        "inode": status.st_ino, "precision": precision, "platform": jax.default_backend(),
        "versions": [__version__, *(_installed_version(name) for name in ("keras", "jax", "jaxlib"))],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _keep(folder: Path, key: str, serialized: bytes, record: dict[str, Any]) -> None:
    """Write a program and its record (the record last: a program without one is never read),
    then remove the oldest beyond :data:`KEPT_PROGRAMS`."""
    with atomic_output(folder / f"{key}.program", overwrite=True) as temporary:
        temporary.write_bytes(serialized)
    with atomic_output(folder / f"{key}.json", overwrite=True) as temporary:
        temporary.write_text(json.dumps(record), encoding="utf-8")
    records = sorted(folder.glob("*.json"), key=lambda kept: kept.stat().st_mtime_ns, reverse=True)
    for old in records[KEPT_PROGRAMS:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".program").unlink(missing_ok=True)
