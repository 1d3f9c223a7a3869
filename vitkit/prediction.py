"""Prediction: images -> class probabilities -> a table (and a titled grid)."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np
import pandas as pd

from vitkit.data.imageset import ImageSet, load_images, write_skipped
from vitkit.device import PRECISIONS, configured_backend, out_of_memory_hint, under_policy
from vitkit.errors import ConfigError
from vitkit.fileio import atomic_output, check_writable, spreadsheet_safe
from vitkit.models.exported import ExportedPredictor, ExportRefused, export_predictor, load_exported, programs_folder

if TYPE_CHECKING:
    from vitkit.models.classifier import ImageClassifier

# What predicts: a Keras classifier, or a model file's exported forward pass (JAX backend).
Predictor = Union["ImageClassifier", ExportedPredictor]

# Dtype policies prediction runs in. float32 gives the exact probabilities; mixed_bfloat16 runs
# the matrix products in bfloat16: faster where the hardware computes it (GPUs, CPUs with
# AVX-512 BF16 or AMX), with probabilities a few hundredths off (bench/cpu_predict.py).
PREDICTION_PRECISIONS = tuple(name for name in PRECISIONS if name != "auto")


def as_model(model: ImageClassifier | str | os.PathLike, classes: Sequence[str] | None = None,
             precision: str = "float32", **foreign_options: Any) -> ImageClassifier:
    """A loaded classifier, loading it when given a path.

    ``classes`` and ``foreign_options`` (``preprocess``, ``num_heads``, ``include_top``,
    ``image_size``) are what files of other tools do not record (see :func:`vitkit.load_model`).
    A vitkit model file names its classes, so there ``classes`` only selects manifest rows.
    ``precision`` is the Keras dtype policy a file is loaded in (see :data:`PREDICTION_PRECISIONS`);
    a model given as an object predicts in its own.
    """
    if precision not in PREDICTION_PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PREDICTION_PRECISIONS)}, got {precision!r}")
    from vitkit.models.classifier import ImageClassifier
    from vitkit.models.modelfile import is_model_file, load_model

    if isinstance(model, ImageClassifier):
        return model
    if is_model_file(model):
        return under_policy(precision, load_model, model, **foreign_options)
    return under_policy(precision, load_model, model, classes=classes, **foreign_options)


def as_predictor(model: Predictor | str | os.PathLike, classes: Sequence[str] | None = None,
                 precision: str = "float32", **foreign_options: Any) -> Predictor:
    """:func:`as_model`, but a vitkit model file on the JAX backend becomes its exported forward
    pass (:mod:`vitkit.models.exported`): kept from an earlier run, or exported now and kept, so
    that the next process neither imports Keras nor compiles. Where no compilation cache folder
    is set, the file loads as a Keras model.
    """
    if isinstance(model, ExportedPredictor):
        return model
    if isinstance(model, (str, os.PathLike)) and _programs_apply(foreign_options):
        kept = load_exported(model, precision)
        if kept is not None:
            return kept
        from vitkit.models.modelfile import is_model_file

        if is_model_file(model):
            loaded = as_model(model, precision=precision)
            if configured_backend() != "jax":  # keras.json named another backend than Keras chose
                return loaded
            return export_predictor(loaded, model, precision)
    return as_model(model, classes, precision, **foreign_options)


def kept_predictor(path: str | os.PathLike, precision: str = "float32", **foreign_options: Any) -> ExportedPredictor | None:
    """Model file ``path``'s forward pass kept by an earlier run (see :func:`as_predictor`), or
    None; looking imports no Keras."""
    return load_exported(path, precision) if _programs_apply(foreign_options) else None


def _programs_apply(foreign_options: dict[str, Any]) -> bool:
    """Whether model files predict through kept programs: on the JAX backend, with a
    compilation cache folder, for vitkit files (no options for another tool's file)."""
    return (configured_backend() == "jax" and programs_folder() is not None
            and all(value is None for value in foreign_options.values()))


def images_for(model: Predictor, data: Any, **load_options: Any) -> ImageSet:
    """Load ``data`` at the model's image size, resize mode and interpolation."""
    return load_images(data, model.spec.image_size, model.spec.resize_mode,
                       interpolation=model.spec.interpolation, **load_options)


def images_while_preparing(model: Predictor, data: Any, batch_size: int, **load_options: Any) -> ImageSet:
    """:func:`images_for`; for an exported forward pass that compiles ahead (on an accelerator),
    the images are read in a thread while the program for ``batch_size`` is exported or compiled."""
    if not (isinstance(model, ExportedPredictor) and model.compiles_ahead):
        return images_for(model, data, **load_options)
    with ThreadPoolExecutor(1, thread_name_prefix="vitkit-images") as pool:
        loading = pool.submit(images_for, model, data, **load_options)
        try:
            model.prepare(batch_size)
        except ExportRefused:
            pass  # predict_probabilities meets the refusal again and predicts with the Keras model
        return loading.result()


def predict_probabilities(model: Predictor, images: ImageSet, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
    """``(n, classes)`` probabilities for every image of the set."""
    if not len(images):
        return np.zeros((0, len(model.class_names)), dtype=np.float32)
    with out_of_memory_hint(batch_size):
        if isinstance(model, ExportedPredictor):
            try:
                return model.probabilities(images, batch_size)
            except ExportRefused as refused:
                warnings.warn(f"{model.path}: predicting without keeping the compiled program ({refused})", stacklevel=2)
                model = refused.model
        from vitkit.data.batches import ImageBatches

        return np.asarray(model.predict(ImageBatches(images, batch_size), verbose=verbose))


def prediction_table(images: ImageSet, probabilities: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per image: ``image``, ``predicted``, ``confidence``, ``true`` (if known), ``p_<class>``..."""
    best = probabilities.argmax(axis=1)
    table = pd.DataFrame({
        "image": list(images.names),
        "predicted": [class_names[i] for i in best],
        "confidence": probabilities[np.arange(len(best)), best],
    })
    if images.labels is not None:
        table["true"] = images.labels
        table["correct"] = table["true"] == table["predicted"]
    for i, name in enumerate(class_names):
        table[f"p_{name}"] = probabilities[:, i]
    return table


def predict(
    model: Predictor | str | os.PathLike,
    data: Any,
    *,
    out: str | os.PathLike | None = None,
    grid: str | os.PathLike | None = None,
    skipped: str | os.PathLike | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    preprocess: str | None = None,
    num_heads: int | None = None,
    precision: str = "float32",
    **load_options: Any,
) -> pd.DataFrame:
    """Predict classes for images and optionally write ``predictions.csv`` and a 4x4 grid.

    Args:
        model: a classifier or a model file. On the JAX backend a vitkit model file predicts
            through its forward pass exported and kept in the compilation cache folder
            (:mod:`vitkit.models.exported`), so a later process starts without compiling.
        data: manifest, folder, image files, or arrays (see :func:`vitkit.data.imageset.load_images`).
        out: CSV file for the table.
        grid: image file (PNG/PDF) with 16 images spread over the set, titled by prediction, green when
            right and red when wrong if the true classes are known.
        skipped: CSV listing the images that could not be read (``image,row,reason``), written
            when there are any; by default ``NAME.skipped.csv`` beside ``out``, none without ``out``.
        batch_size: images per prediction step.
        overwrite: replace existing output files.
        preprocess, num_heads: for a weights file of another tool (see :func:`vitkit.load_model`),
            whose class names are then ``classes``.
        precision: ``float32`` (exact), or ``mixed_bfloat16`` / ``mixed_float16``: a model file
            loaded in that dtype policy, faster where the hardware computes it natively, its
            probabilities off by up to a few hundredths (see :data:`PREDICTION_PRECISIONS`).
        **load_options: ``cache_dir``, ``on_bad_image``, ``label_from``, ``classes``, ``root``.

    Returns:
        The prediction table (see :func:`prediction_table`).

    Example:
        >>> table = vitkit.predict("models/products.weights.h5", "examples/photos/mug")
        >>> table[["image", "predicted", "confidence"]].head()
    """
    if skipped is None and out is not None:
        skipped = skipped_path(out)
    for target in (out, grid, skipped):
        if target is not None:
            check_writable(target, overwrite)
    model = as_predictor(model, load_options.get("classes"), precision, preprocess=preprocess, num_heads=num_heads)
    images = images_while_preparing(model, data, batch_size, **load_options)
    _warn_unknown_classes(images, model.class_names)
    probabilities = predict_probabilities(model, images, batch_size)
    table = prediction_table(images, probabilities, model.class_names)
    if out is not None:
        write_table(table, out, overwrite)
    if skipped is not None:
        Path(skipped).unlink(missing_ok=True)
        if images.skipped:
            write_skipped(images.skipped, skipped, overwrite=True)
    if grid is not None and len(table):
        from vitkit.figures import save_figure

        save_figure(prediction_grid(images, table), grid, overwrite)
    return table


def skipped_path(out: str | os.PathLike) -> Path:
    """Where the list of skipped images goes beside ``predictions.csv``: ``predictions.skipped.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.skipped.csv")


def _warn_unknown_classes(images: ImageSet, class_names: Sequence[str]) -> None:
    unknown = sorted({label for label in images.labels or [] if label not in class_names})
    if unknown:
        warnings.warn(
            f"class(es) {unknown} of the input are not among the model's classes {list(class_names)}; "
            f"their images can never be predicted right",
            stacklevel=3,
        )


def prediction_grid(images: ImageSet, table: pd.DataFrame, count: int = 16):
    """A 4x4 grid of ``count`` images spread over the table (:func:`~vitkit.figures.spread_indices`), titled with their predictions."""
    from vitkit.figures import image_grid_figure, spread_indices

    chosen = spread_indices(len(table), count)
    pixels = images.read(chosen)
    titles, verdicts = [], []
    for _, row in table.iloc[chosen].iterrows():
        title = f"{Path(row['image']).name}\n{row['predicted']} ({row['confidence']:.0%})"
        if "true" in row:
            title += f"\ntrue: {row['true']}"
        titles.append(title)
        verdicts.append(bool(row["correct"]) if "correct" in row else None)
    return image_grid_figure(list(pixels), titles, verdicts if "correct" in table else None)


def write_table(table: pd.DataFrame, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a table as UTF-8 CSV, atomically; text cells and headers are :func:`spreadsheet_safe`."""
    safe = table.rename(columns=spreadsheet_safe)
    for position, dtype in enumerate(safe.dtypes):
        if pd.api.types.is_string_dtype(dtype):
            safe.isetitem(position, safe.iloc[:, position].map(spreadsheet_safe))
    with atomic_output(path, overwrite=overwrite) as temporary:
        safe.to_csv(temporary, index=False, float_format="%.6g")
    return Path(path)
