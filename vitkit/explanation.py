"""Attention maps: where a ViT classifier looks, computed in the forward pass that predicts.

Methods (``method=``):

``rollout``
    Attention rollout (Abnar & Zuidema 2020). Per layer the heads are fused (``mean``, ``max`` or
    ``min``), optionally the lowest ``discard_ratio`` of the fused weights are set to zero (never
    the class token's attention to itself), the identity is added for the residual path, the rows
    are renormalised, and the layers are multiplied, last to first. The map is the class token's
    row over the patch tokens.
``gradient``
    Class-specific relevance (Chefer et al. 2021): ``R = I``; for every layer
    ``R += mean_heads(max(dS/dA * A, 0)) @ R``, where ``S`` is the score (logit) of the explained
    class: the predicted one, or the one asked for. The map is ``R``'s class-token row.
``layer``
    The class token's attention over the patches in one layer, heads fused (layer 0, the first,
    by default; ``-1`` is the last).

Every map is reshaped to the patch grid, divided by its maximum (values in [0, 1]) and resized
bilinearly to the image. The maths runs inside the compiled prediction step on a batch, so
explaining a set costs little more than predicting it.

Example:
    >>> result = vitkit.explain("models/products.weights.h5", "photos/test", method="gradient")
    >>> result.table()[["image", "predicted", "confidence"]]
    >>> result.maps([0]).shape          # (1, height, width), values in [0, 1]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import pandas as pd
from keras import ops

from vitkit.data import ImageSet
from vitkit.errors import ConfigError
from vitkit.explain_outputs import (
    OUTPUT_FILES,
    figure_paths,
    focus_position,
    save_maps_file,
    write_attention_json,
    write_figures,
)
from vitkit.fileio import check_writable
from vitkit.model import ImageClassifier
from vitkit.prediction import as_model, images_for, prediction_table
from vitkit.progress import Progress

METHODS = ("rollout", "gradient", "layer")
HEAD_FUSIONS = ("mean", "max", "min")


# The maths on attention tensors (keras.ops: runs in the compiled graph and on NumPy arrays) -----

def fuse_heads(attention, head_fusion: str = "mean"):
    """Fuse the heads of attention weights: ``(..., heads, queries, keys)`` -> ``(..., queries, keys)``."""
    _check_choice(head_fusion, HEAD_FUSIONS, "head fusion")
    reduce = {"mean": ops.mean, "max": ops.max, "min": ops.min}[head_fusion]
    return reduce(attention, axis=-3)


def discard_lowest(fused, discard_ratio: float):
    """Set the lowest ``discard_ratio`` share of each ``(tokens, tokens)`` matrix to zero.

    Exactly ``int(tokens**2 * discard_ratio)`` entries are dropped per matrix, chosen among all
    entries except ``[0, 0]`` (the class token's attention to itself), which is always kept.
    """
    _check_ratio(discard_ratio)
    tokens = fused.shape[-1]
    count = min(int(tokens * tokens * discard_ratio), tokens * tokens - 1)
    if count <= 0:
        return fused
    flat = ops.reshape(fused, (-1, tokens * tokens))
    is_class_self = ops.arange(tokens * tokens) == 0
    ranked = ops.where(is_class_self, ops.cast(np.inf, flat.dtype), flat)
    ranks = ops.argsort(ops.argsort(ranked, axis=-1), axis=-1)
    kept = ops.where(ranks >= count, flat, ops.zeros_like(flat))
    return ops.reshape(kept, ops.shape(fused))


def attention_rollout(attention, head_fusion: str = "mean", discard_ratio: float = 0.0):
    """Attention rollout: the class token's row over the patches, before normalisation.

    Args:
        attention: ``(batch, layers, heads, tokens, tokens)`` attention weights, class token first.
        head_fusion: ``mean``, ``max`` or ``min`` over the heads.
        discard_ratio: share of the lowest fused weights per layer set to zero (0 keeps all).

    Returns:
        ``(batch, tokens - 1)`` relevance of every patch token.
    """
    fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
    mixed = fused + ops.eye(fused.shape[-1], dtype=fused.dtype)
    mixed = mixed / ops.sum(mixed, axis=-1, keepdims=True)
    return _class_row_of_product(mixed)[:, 1:]


def gradient_rollout(attention, gradients):
    """Class-specific relevance (Chefer et al. 2021) from attention weights and their gradients.

    ``R = I``; per layer, first to last, ``R += mean_heads(max(gradients * attention, 0)) @ R``.

    Args:
        attention: ``(batch, layers, heads, tokens, tokens)`` attention weights.
        gradients: gradients of the explained class's score with respect to ``attention``.

    Returns:
        ``(batch, tokens - 1)``: the class token's row of ``R`` over the patches.
    """
    weighted = ops.mean(ops.relu(gradients * attention), axis=2)
    return _class_row_of_product(weighted + ops.eye(weighted.shape[-1], dtype=weighted.dtype))[:, 1:]


def class_token_attention(attention):
    """How much the class token attends to each patch: ``(..., tokens, tokens)`` -> ``(..., tokens - 1)``."""
    return attention[..., 0, 1:]


def _class_row_of_product(matrices):
    """Row 0 of ``matrices[:, L-1] @ ... @ matrices[:, 0]`` for ``(batch, L, T, T)``, as ``(batch, T)``.

    Carrying one row through the layers costs ``T**2`` per layer instead of a ``T**3`` product.
    """
    layers = matrices.shape[1]
    row = matrices[:, layers - 1, 0, :]
    for layer in range(layers - 2, -1, -1):
        row = ops.einsum("bt,bts->bs", row, matrices[:, layer])
    return row


# From patch rows to image maps (NumPy) ---------------------------------------------------------

def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Divide every map (first axis = map) by its maximum; all-zero maps stay zero. Float32 in [0, 1]."""
    maps = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    top = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(len(maps), np.float32)
    scale = np.where(top > 0, top, 1.0).reshape((-1,) + (1,) * (maps.ndim - 1))
    return np.clip(maps / scale, 0.0, 1.0)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(n, rows, cols)`` maps to ``(n, height, width)``.

    Pixel centres are aligned (the ``cv2.INTER_LINEAR`` / half-pixel convention), so a patch's
    value sits at its centre and edges are clamped.
    """
    maps = np.asarray(maps, dtype=np.float32)
    vertical = _interpolation_matrix(maps.shape[1], size[0])
    horizontal = _interpolation_matrix(maps.shape[2], size[1])
    return np.einsum("hr,nrc,wc->nhw", vertical, maps, horizontal, optimize=True).astype(np.float32)


def _interpolation_matrix(source: int, target: int) -> np.ndarray:
    """``(target, source)`` weights of half-pixel linear interpolation with clamped edges."""
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    position = np.clip(position, 0.0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weight = (position - low).astype(np.float32)
    matrix = np.zeros((target, source), dtype=np.float32)
    np.add.at(matrix, (np.arange(target), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(target), high), weight)
    return matrix


# The compiled explanation step -----------------------------------------------------------------

class _ExplanationStep(keras.Model):
    """One forward pass: probabilities, the method's patch relevance and per-layer class-token maps.

    A model wrapping the classifier's layers, so ``predict_on_batch`` compiles it the way plain
    prediction is compiled (XLA on TensorFlow, ``jax.jit`` on JAX).
    """

    def __init__(self, classifier: ImageClassifier, method: str, head_fusion: str,
                 discard_ratio: float, layer: int):
        super().__init__(name=f"{classifier.name}_explanation")
        self.classifier = classifier
        self.method = method
        self.head_fusion = head_fusion
        self.discard_ratio = discard_ratio
        self.layer = layer

    def call(self, inputs):
        images, targets = inputs["images"], inputs["targets"]
        if self.method == "gradient":
            logits, attention, gradients = _scores_with_attention_gradients(self.classifier, images, targets)
        else:
            logits, attention = self.classifier.logits_and_attention(images)
        layer_rows = class_token_attention(fuse_heads(attention, self.head_fusion))
        if self.method == "gradient":
            relevance = gradient_rollout(attention, gradients)
        elif self.method == "rollout":
            relevance = attention_rollout(attention, self.head_fusion, self.discard_ratio)
        else:
            relevance = layer_rows[:, self.layer]
        return {
            "probabilities": ops.softmax(ops.cast(logits, "float32"), axis=-1),
            "relevance": relevance,
            "layer_maps": layer_rows,
            "explained": _explained_classes(logits, targets),
        }


def _explanation_step(model: ImageClassifier, method: str, head_fusion: str, discard_ratio: float,
                      layer: int) -> _ExplanationStep:
    """The step for these options, made once per model so later calls reuse its compiled function.

    The steps live on the model (outside Keras' attribute tracking, so they add no layers or
    weights to it) and go away with it.
    """
    steps = model.__dict__.get("_explanation_steps")
    if steps is None:
        steps = {}
        object.__setattr__(model, "_explanation_steps", steps)
    key = (method, head_fusion, discard_ratio, layer)
    if key not in steps:
        steps[key] = _ExplanationStep(model, method, head_fusion, discard_ratio, layer)
    return steps[key]


def _explained_classes(logits, targets):
    """The class each image is explained for: its target, or its predicted class where the target is ``-1``."""
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    return ops.where(targets < 0, predicted, ops.cast(targets, "int32"))


def _chosen_scores(logits, targets):
    """Sum over the batch of each image's logit of its explained class."""
    chosen = _explained_classes(logits, targets)
    return ops.sum(ops.take_along_axis(logits, ops.expand_dims(chosen, -1), axis=-1))


def _scores_with_attention_gradients(classifier: ImageClassifier, images, targets):
    """``(logits, attention, d score / d attention)`` with the backend's own autodiff.

    The gradient is taken against a zero offset added to the attention weights, so no backend
    needs access to intermediate tensors. Images are independent in inference mode, so one
    gradient of the summed scores holds every image's own gradient.
    """
    config = classifier.backbone.config
    rows, cols = classifier.backbone.grid_shape(classifier.spec.image_size)
    tokens = rows * cols + 1
    offset = ops.zeros((ops.shape(images)[0], config.num_layers, config.num_heads, tokens, tokens))

    def score(attention_offset):
        logits, attention = classifier.logits_and_attention(images, attention_offset)
        return _chosen_scores(logits, targets), (logits, attention)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(offset)
            total, (logits, attention) = score(offset)
        return logits, attention, tape.gradient(total, offset)
    if backend == "jax":
        import jax

        gradients, (logits, attention) = jax.grad(score, has_aux=True)(offset)
        return logits, attention, gradients
    raise ConfigError(f"gradient maps need the tensorflow or jax backend, not {backend}; use --method rollout")


# Results ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Explanation:
    """Attention maps and predictions for a set of images.

    Attributes:
        images: the images as the model saw them (:class:`~vitkit.data.ImageSet`).
        class_names: the model's classes, in output order.
        probabilities: ``(n, classes)`` class probabilities.
        explained: ``(n,)`` index of the class each map explains (the predicted class unless
            another was asked for; rollout and layer maps do not depend on the class).
        grid_maps: ``(n, rows, cols)`` maps on the patch grid, values in [0, 1].
        layer_maps: ``(n, layers, rows, cols)`` class-token attention of every layer, heads fused
            with ``head_fusion`` (raw attention weights, not normalised).
        method, head_fusion, discard_ratio, layer: how the maps were made.
    """

    images: ImageSet
    class_names: list[str]
    probabilities: np.ndarray
    explained: np.ndarray
    grid_maps: np.ndarray
    layer_maps: np.ndarray
    method: str
    head_fusion: str
    discard_ratio: float
    layer: int

    def __len__(self) -> int:
        return len(self.images)

    @property
    def names(self) -> list[str]:
        return self.images.names

    @property
    def labels(self) -> list[str] | None:
        return self.images.labels

    @property
    def predicted(self) -> np.ndarray:
        """``(n,)`` predicted class indices."""
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        """``(n,)`` probability of the predicted class."""
        return self.probabilities[np.arange(len(self)), self.predicted]

    @property
    def correct(self) -> np.ndarray | None:
        """``(n,)`` bool: is the prediction the true class? None when the true classes are unknown."""
        if self.labels is None:
            return None
        return np.array([label == self.class_names[p] for label, p in zip(self.labels, self.predicted)], dtype=bool)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.image_size)

    def maps(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """``(k, height, width)`` float32 maps at image resolution, values in [0, 1]."""
        chosen = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        return np.clip(resize_maps(self.grid_maps[chosen], self.image_size), 0.0, 1.0)

    def pixels(self, indices: Sequence[int]) -> np.ndarray:
        """``(k, height, width, 3)`` uint8 images the maps belong to."""
        return self.images.read(np.asarray(indices, dtype=np.int64))

    def description(self) -> str:
        """The method in words, e.g. ``rollout (heads: max, discard ratio 0.9)``."""
        if self.method == "gradient":
            return "gradient relevance (Chefer et al. 2021)"
        details = f"heads: {self.head_fusion}"
        if self.method == "rollout":
            return f"rollout ({details}, discard ratio {self.discard_ratio:g})"
        return f"layer {self.layer} class-token attention ({details})"

    def table(self) -> pd.DataFrame:
        """One row per image: the prediction table plus ``explained`` (the class each map explains)."""
        table = prediction_table(self.images, self.probabilities, self.class_names)
        table.insert(3, "explained", [self.class_names[i] for i in self.explained])
        return table


def explain(
    model: ImageClassifier | str | os.PathLike,
    data: Any,
    *,
    method: str = "rollout",
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    layer: int = 0,
    class_name: str | None = None,
    out: str | os.PathLike | None = None,
    pdf: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    save_maps: str | os.PathLike | None = None,
    export_attention: str | os.PathLike | None = None,
    focus: str | int | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    progress: bool = True,
    preprocess: str | None = None,
    num_heads: int | None = None,
    **load_options: Any,
) -> Explanation:
    """Predict and draw attention maps for images, in one forward pass per batch.

    Args:
        model: a classifier or a model file.
        data: manifest, folder, image files, or arrays (see :func:`vitkit.data.load_images`).
        method: ``rollout`` (class-agnostic attention rollout), ``gradient`` (class-specific
            relevance, Chefer et al. 2021) or ``layer`` (one layer's class-token attention).
        head_fusion: ``mean``, ``max`` or ``min`` over the heads (rollout and layer maps).
        discard_ratio: share of the lowest fused weights per layer dropped by rollout (0 to <1).
        layer: the layer of ``method="layer"``; negative counts from the last.
        class_name: with ``method="gradient"``, explain this class instead of the predicted one.
        out: folder for the figures: ``figures/NNNN_<name>.png`` per image (original | overlay |
            masked), ``grid.png`` (the first 16 overlays), ``layers.png`` and ``heads.png`` (the
            per-layer strip and per-head maps of the ``focus`` image), ``explanations.csv`` and,
            when some images could not be read, ``skipped.csv``.
        pdf: a PDF with one page per image (original | overlay | masked).
        report: a self-contained HTML report (see :mod:`vitkit.report`).
        save_maps: an ``.npz`` with every map at image resolution, keyed by image.
        export_attention: a JSON file with the ``focus`` image's attention in BertViz's layout
            (every layer and head: about 50 MB for ViT-B/16 at 224 px).
        focus: the image for ``layers.png``, ``heads.png`` and ``export_attention``: a position
            (0 = first, the default) or a file name (the end of the path is enough).
        batch_size: images per step.
        overwrite: replace existing output files.
        progress: show progress bars.
        preprocess, num_heads: for a weights file of another tool (see :func:`vitkit.load_model`),
            whose class names come from ``classes``.
        **load_options: ``cache_dir``, ``on_bad_image``, ``label_from``, ``classes``, ``root``.

    Returns:
        An :class:`Explanation` with the predictions and maps.

    Example:
        >>> result = vitkit.explain("models/products.weights.h5", "photos/test", method="gradient",
        ...                         out="explained/", report="explained/report.html")
        >>> result.maps([0]).shape           # (1, height, width), values in [0, 1]
    """
    model_source = None if isinstance(model, ImageClassifier) else model
    model = as_model(model, load_options.get("classes"), preprocess=preprocess, num_heads=num_heads)
    check_options(model, method, head_fusion, discard_ratio, layer, class_name, batch_size)
    for target in (pdf, report, save_maps, export_attention):
        if target is not None:
            check_writable(target, overwrite)
    if out is not None:
        for name in OUTPUT_FILES:
            check_writable(Path(out) / name, overwrite)
    images = images_for(model, data, progress=progress, **load_options)
    focus_index = focus_position(images.names, focus)
    if out is not None:
        for path in figure_paths(out, images.names):
            check_writable(path, overwrite)
    result = explain_images(model, images, method=method, head_fusion=head_fusion,
                            discard_ratio=discard_ratio, layer=layer, class_name=class_name,
                            batch_size=batch_size, progress=progress)
    if not len(result):
        return result
    if out is not None:
        write_figures(result, model, out, focus_index, progress)
    if pdf is not None:
        from vitkit.attention_figures import image_figures, save_pdf

        save_pdf(image_figures(result, range(len(result))), pdf, overwrite=True)
    if report is not None:
        from vitkit.report import write_report

        write_report(result, report, model, model_source=model_source, overwrite=True, progress=progress)
    if save_maps is not None:
        save_maps_file(result, save_maps, overwrite=True)
    if export_attention is not None:
        write_attention_json(model, images, export_attention, focus_index, overwrite=True)
    return result


def check_options(model: ImageClassifier, method: str, head_fusion: str, discard_ratio: float,
                  layer: int, class_name: str | None, batch_size: int) -> None:
    """Refuse inconsistent explanation options with a message saying what to change."""
    _check_choice(method, METHODS, "method")
    _check_choice(head_fusion, HEAD_FUSIONS, "head fusion")
    _check_ratio(discard_ratio)
    layers = model.backbone.config.num_layers
    if not -layers <= layer < layers:
        raise ConfigError(f"layer {layer} does not exist: the model has {layers} layers (0 to {layers - 1}, or -1 for the last)")
    if class_name is not None:
        if method != "gradient":
            raise ConfigError(f"{method} maps are the same for every class; use method gradient to explain class {class_name!r}")
        if class_name not in model.class_names:
            raise ConfigError(f"class {class_name!r} is not one of the model's classes {model.class_names}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")


def explain_images(
    model: ImageClassifier,
    images: ImageSet,
    *,
    method: str = "rollout",
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    layer: int = 0,
    class_name: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> Explanation:
    """:func:`explain` for an already loaded :class:`~vitkit.data.ImageSet` at the model's size."""
    check_options(model, method, head_fusion, discard_ratio, layer, class_name, batch_size)
    layers = model.backbone.config.num_layers
    step = _explanation_step(model, method, head_fusion, float(discard_ratio), layer % layers)
    target = -1 if class_name is None else model.class_names.index(class_name)
    rows, cols = model.backbone.grid_shape(model.spec.image_size)
    outputs: dict[str, list[np.ndarray]] = {"probabilities": [], "relevance": [], "layer_maps": [], "explained": []}
    # Every step gets a full batch (the last one padded), so the step is compiled once.
    steady = max(min(batch_size, len(images)), 1)
    with Progress(len(images), "explaining", enabled=None if progress else False) as bar:
        for start in range(0, len(images), steady):
            indices = np.arange(start, min(start + steady, len(images)))
            padded = np.concatenate([indices, np.full(steady - len(indices), indices[-1])])
            batch = step.predict_on_batch({
                "images": images.read(padded),
                "targets": np.full(steady, target, dtype=np.int32),
            })
            for key, values in batch.items():
                outputs[key].append(np.asarray(values)[:len(indices)])
            bar.update(len(indices))
    count = len(images)
    joined = {key: np.concatenate(values) if values else None for key, values in outputs.items()}
    return Explanation(
        images=images,
        class_names=model.class_names,
        probabilities=_or_empty(joined["probabilities"], (count, len(model.class_names))),
        explained=_or_empty(joined["explained"], (count,)).astype(np.int64),
        grid_maps=normalise_maps(_or_empty(joined["relevance"], (count, rows * cols)).reshape(count, rows, cols)),
        layer_maps=_or_empty(joined["layer_maps"], (count, layers, rows * cols)).reshape(count, layers, rows, cols),
        method=method,
        head_fusion=head_fusion,
        discard_ratio=float(discard_ratio),
        layer=layer % layers,
    )


def attention_weights(model: ImageClassifier, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (n, classes), attention (n, layers, heads, tokens, tokens))`` for a few images.

    Every weight of every head: meant for one image or a handful (per-head figures, exports).
    """
    logits, attention = model.logits_and_attention(ops.convert_to_tensor(np.asarray(pixels)))
    probabilities = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    return ops.convert_to_numpy(probabilities), ops.convert_to_numpy(attention)


def _or_empty(values: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32) if values is None else values


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}; got {value!r}")


def _check_ratio(discard_ratio: float) -> None:
    if not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"discard ratio must be at least 0 and below 1, got {discard_ratio}")
