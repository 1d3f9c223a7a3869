"""A model file's forward pass kept on disk, so that a later process predicts without Keras.

On the JAX backend, the first prediction from a model file exports the model's forward pass
with ``jax.export`` (StableHLO taking the weights as arguments, one program per batch size)
into ``programs/`` of the compilation cache folder
(:func:`vitkit.device.configure_compilation_cache`), beside a record of the file's spec and of
the HDF5 dataset of each argument. A later process finds them by the file's identity (path,
size, modification time, inode), the precision and the software versions, and runs the
program, which JAX's persistent cache keeps compiled: it imports no Keras, builds no model and
traces nothing. The weights are mapped from the file and copied to the device in a thread as
soon as the record is found, while the program is prepared. On an accelerator every run uses
the program of its batch size, a smaller set padded (a few milliseconds there), so one program
serves one photo and many; on a CPU, where padding costs real work, a set smaller than a batch
gets a program of its own size. A batch size with no program yet loads the Keras model once to
export one. Turning the compilation cache off turns this off too.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.metadata
import json
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import h5py
import numpy as np

from vitkit import __version__
from vitkit.data.imageset import ImageSet
from vitkit.errors import first_line
from vitkit.fileio import atomic_output
from vitkit.models.spec import ModelSpec

if TYPE_CHECKING:
    from vitkit.models.classifier import ImageClassifier

PROGRAMS_FOLDER = "programs"
# Records of model files that changed or went stay behind; the oldest beyond this are removed.
KEPT_MODELS = 32


class ExportRefused(Exception):
    """``jax.export`` refused a model's forward pass; ``model`` is the Keras model, to predict with instead."""

    def __init__(self, model: ImageClassifier, error: BaseException):
        super().__init__(first_line(error))
        self.model = model


@dataclasses.dataclass(eq=False)
class ExportedPredictor:
    """A model file's forward pass as exported JAX programs (one per batch size) and their weights.

    ``spec`` is the file's :class:`~vitkit.models.spec.ModelSpec`; :meth:`probabilities` gives
    what the Keras model's ``predict`` gives for the same images. ``datasets`` name the weights
    in the file, in the programs' argument order. ``model`` is the Keras model where one is
    loaded: it exports the programs not kept yet (loaded from ``path`` when one is needed).
    """

    path: Path
    precision: str
    spec: ModelSpec
    datasets: list[list]  # [name, shape, dtype] of each argument
    model: ImageClassifier | None = None
    # On the device, or on their way there from the file (see load_exported).
    _weights: Future | tuple[Any, ...] | None = dataclasses.field(default=None, repr=False)
    _runs: dict[int, Callable[..., Any]] = dataclasses.field(default_factory=dict, repr=False)
    _refused: ExportRefused | None = dataclasses.field(default=None, repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    def probabilities(self, images: ImageSet, batch_size: int) -> np.ndarray:
        """``(n, classes)`` probabilities, in batches of ``batch_size``: on a CPU, of all images
        where there are fewer. The last batch is padded, so one program serves the whole set."""
        size = batch_size if self.compiles_ahead else min(batch_size, len(images))
        run = self._program(size)
        weights = self._device_weights()
        if weights is None:  # the file no longer holds what its record names: export from the file itself
            run = self._program(size, kept=False)
            weights = self._device_weights()
        outputs = [run(weights, pixels) for pixels in _padded_batches(images, size)]
        probabilities = np.concatenate([np.asarray(output) for output in outputs])
        return probabilities[:len(images)].astype(np.float32, copy=False)

    @property
    def compiles_ahead(self) -> bool:
        """Whether the program depends on the batch size alone, so that :meth:`prepare` can
        compile it before the images are known: on an accelerator, where a smaller set is padded
        to the whole batch (a few milliseconds there); on a CPU padding costs real work."""
        import jax

        return jax.default_backend() != "cpu"

    def prepare(self, batch_size: int) -> None:
        """Compile the program for batches of ``batch_size`` now, where :attr:`compiles_ahead`.

        Raises:
            ExportRefused: ``jax.export`` cannot export the model.
        """
        if self.compiles_ahead:
            self._program(batch_size)

    def _program(self, batch: int, kept: bool = True) -> Callable[..., Any]:
        """The compiled program for ``batch`` images: the ``kept`` one where there is one, else
        exported now and kept. It compiles (from JAX's cache, for a kept one) while the weights
        are still on their way to the device."""
        if batch not in self._runs or not kept:
            import jax

            program = _read_program(self.path, self.precision, batch) if kept else None
            if program is None:
                program = self._export(batch)
            arguments = (tuple(jax.ShapeDtypeStruct(shape, dtype) for _, shape, dtype in self.datasets),
                         jax.ShapeDtypeStruct((batch, *self.spec.image_size, 3), "uint8"))
            self._runs[batch] = jax.jit(program.call).lower(*arguments).compile()
        return self._runs[batch]

    def _device_weights(self) -> tuple[Any, ...] | None:
        """The weights on the device (waiting for them if they are on their way); None where
        the file's could not be read."""
        if isinstance(self._weights, Future):
            self._weights = self._weights.result()
        return self._weights

    def _export(self, batch: int):
        """Export the program for ``batch`` images from the Keras model (loading it if needed) and keep it.

        Raises:
            ExportRefused: ``jax.export`` cannot export the model (this time or before).
        """
        if self._refused is not None:
            raise self._refused
        if self.model is None:
            from vitkit.device import under_policy
            from vitkit.models.modelfile import load_model

            self.model = under_policy(self.precision, load_model, self.path)
            self.datasets = _keep_datasets(self.model, self.path, self.precision)
        if self._device_weights() is None:
            self._weights = _weights_of(self.model)
        try:
            program = _export_forward(self.model, batch)
        except (ValueError, TypeError, NotImplementedError) as error:
            self._refused = ExportRefused(self.model, error)
            raise self._refused from error
        folder = programs_folder()
        if folder is not None:
            serialized = program.serialize()
            with atomic_output(_program_path(folder, self.path, self.precision, batch), overwrite=True) as temporary:
                temporary.write_bytes(serialized)
        return program


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
    """The kept record of model file ``path`` at ``precision``, or None where there is none.
    Imports no Keras. The weights start on their way to the device, in a thread."""
    folder = programs_folder()
    if folder is None:
        return None
    try:
        record = json.loads((folder / f"{_model_key(path, precision)}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    importlib.import_module("jax")  # here, not first in the thread, whose import would hold locks this one may need

    predictor = ExportedPredictor(Path(path), precision, ModelSpec.from_dict(record["spec"]), record["weights"])
    reader = ThreadPoolExecutor(1, thread_name_prefix="vitkit-weights")
    predictor._weights = reader.submit(_read_weights, path, predictor.datasets)
    reader.shutdown(wait=False)
    return predictor


def export_predictor(model: ImageClassifier, path: str | os.PathLike, precision: str) -> ExportedPredictor:
    """A predictor of ``model``, loaded from model file ``path`` at ``precision``; its record is
    kept (where a compilation cache folder is set) for :func:`load_exported`, and its programs
    as they are exported."""
    return ExportedPredictor(Path(path), precision, model.spec, _keep_datasets(model, path, precision), model)


def _keep_datasets(model: ImageClassifier, path: str | os.PathLike, precision: str) -> list[list]:
    """The programs' arguments of ``model`` as ``[dataset, shape, dtype]``, kept in the record
    of model file ``path`` at ``precision`` where a compilation cache folder is set."""
    datasets = [[name, list(variable.shape), str(variable.dtype)] for variable, name in _arguments(model)]
    folder = programs_folder()
    if folder is not None:
        _keep_record(folder, _model_key(path, precision), {"spec": model.spec.to_dict(), "weights": datasets})
    return datasets


def _arguments(model: ImageClassifier) -> list[tuple[Any, str]]:
    """The programs' weight arguments: ``(variable, its HDF5 dataset)`` for each variable of
    ``model`` that the file ``save_model`` writes holds, in ``model.weights`` order."""
    from vitkit.models.modelfile import weight_groups

    dataset_of = {id(variable): f"{group}/vars/{name}" if group else f"vars/{name}"
                  for group, _, variables in weight_groups(model) for name, variable in variables.items()}
    return [(variable, dataset_of[id(variable)]) for variable in model.weights if id(variable) in dataset_of]


def _weights_of(model: ImageClassifier) -> tuple[Any, ...]:
    """The programs' weight arguments from a loaded model, on the device."""
    import jax

    return tuple(jax.device_put([variable.value for variable, _ in _arguments(model)]))


def _export_forward(model: ImageClassifier, batch: int):
    """``model``'s forward pass for ``batch`` images as a ``jax.export.Exported`` taking
    ``(weights, images)``: the weights its model file holds, in ``model.weights`` order."""
    import jax
    from jax import export

    arguments = [variable for variable, _ in _arguments(model)]
    position = {id(variable): index for index, variable in enumerate(arguments)}

    def forward(weights, images):
        def values(variables):  # variables the file lacks (random-number states) stay constants
            return [weights[position[id(v)]] if id(v) in position else v.value for v in variables]

        outputs, _ = model.stateless_call(values(model.trainable_variables), values(model.non_trainable_variables),
                                          images, training=False)
        return outputs

    height, width = model.spec.image_size
    # Custom calls (cuDNN's fused attention) are not guaranteed stable across jaxlib versions;
    # a program is only read again by the versions that made it (its key), so all are allowed.
    return export.export(jax.jit(forward), disabled_checks=[export.DisabledSafetyCheck.custom_call("ALL")])(
        tuple(jax.ShapeDtypeStruct(variable.shape, variable.dtype) for variable in arguments),
        jax.ShapeDtypeStruct((batch, height, width, 3), "uint8"),
    )


def _read_weights(path: str | os.PathLike, datasets: list[list]) -> tuple[Any, ...] | None:
    """The arrays of ``datasets`` (``[name, shape, dtype]``), on the device; None where one is
    missing or differs (the file was replaced by one of another layout). Contiguous datasets
    are mapped from the file, not copied in memory first, where the file system allows it."""
    import jax

    arrays = []
    try:
        with h5py.File(path, "r") as handle:
            mapped = _mapped(path)
            for name, shape, dtype in datasets:
                dataset = handle.get(name)
                if not isinstance(dataset, h5py.Dataset) or list(dataset.shape) != shape \
                        or dataset.dtype != np.dtype(dtype):
                    return None
                arrays.append(_mapped_or_read(dataset, mapped))
    except OSError:
        return None
    return tuple(jax.device_put(arrays))


def _mapped(path: str | os.PathLike) -> mmap.mmap | None:
    """The file mapped read-only, or None where it cannot be."""
    try:
        with open(path, "rb") as raw:
            return mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def _mapped_or_read(dataset: h5py.Dataset, mapped: mmap.mmap | None) -> np.ndarray:
    """``dataset``'s array: a view of the ``mapped`` file where it is stored contiguously, unfiltered."""
    offset = dataset.id.get_offset()
    if mapped is None or offset is None or dataset.chunks is not None or dataset.size == 0:
        return dataset[()]
    return np.frombuffer(mapped, dataset.dtype, dataset.size, offset).reshape(dataset.shape)


def _read_program(path: Path, precision: str, batch: int):
    """The kept program of ``path`` at ``precision`` for ``batch`` images on this platform, or None."""
    folder = programs_folder()
    if folder is None:
        return None
    try:
        serialized = _program_path(folder, path, precision, batch).read_bytes()
    except OSError:
        return None
    from jax import export

    return export.deserialize(bytearray(serialized))


def _program_path(folder: Path, path: str | os.PathLike, precision: str, batch: int) -> Path:
    """Where the program of model file ``path`` at ``precision`` for ``batch`` images on this platform is kept."""
    import jax

    return folder / f"{_model_key(path, precision)}-{jax.default_backend()}-{batch}.program"


def _model_key(path: str | os.PathLike, precision: str) -> str:
    """What kept records and programs depend on: the file as it is now, the precision and every
    version that shapes a program, hashed. Raises OSError for a missing file."""
    status = Path(path).stat()
    identity = {
        "file": str(Path(path).resolve()), "size": status.st_size, "modified": status.st_mtime_ns,
        "inode": status.st_ino, "precision": precision,
        "versions": [__version__, *(_installed_version(name) for name in ("keras", "jax", "jaxlib"))],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _keep_record(folder: Path, key: str, record: dict[str, Any]) -> None:
    """Write a model's record, then remove the oldest records beyond :data:`KEPT_MODELS` with
    their programs."""
    with atomic_output(folder / f"{key}.json", overwrite=True) as temporary:
        temporary.write_text(json.dumps(record), encoding="utf-8")
    records = sorted(folder.glob("*.json"), key=lambda kept: kept.stat().st_mtime_ns, reverse=True)
    for old in records[KEPT_MODELS:]:
        old.unlink(missing_ok=True)
        for program in folder.glob(f"{old.stem}-*.program"):
            program.unlink(missing_ok=True)
