"""The compiled explanation step: probabilities, the method's map and per-layer class-token maps
of a batch in the forward pass that predicts (with integrated gradients, also the passes along
the path from the image's mean colour)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from vitkit.data.imageset import ImageSet
from vitkit.errors import ConfigError
from vitkit.explanation.result import Explanation
from vitkit.explanation.rollout import (
    HEAD_FUSIONS,
    INTEGRATED_STEPS,
    METHODS,
    _check_choice,
    _check_ratio,
    attention_rollout,
    class_token_attention,
    fuse_heads,
    gradient_rollout,
    integrated_gradients,
    map_resolution,
    mean_colour,
    normalise_maps,
    path_points,
    positive_pixel_map,
)
from vitkit.models.classifier import ImageClassifier
from vitkit.progress import Progress


class _ExplanationStep(keras.Model):
    """One forward pass: probabilities, the method's map and per-layer class-token maps.

    The map is ``(batch, height, width)`` for a method with maps per pixel and ``(batch, rows,
    cols)`` (the patch grid) for the others (:func:`~vitkit.explanation.rollout.map_resolution`).

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
        config = self.classifier.backbone.config
        readout = {"prefix_tokens": config.prefix_tokens, "pooling": config.pooling}
        layer_rows = class_token_attention(fuse_heads(attention, self.head_fusion), **readout)
        if self.method == "integrated":
            classes = _explained_classes(logits, targets)
            relevance = positive_pixel_map(_integrated_gradients(self.classifier, images, classes),
                                           config.patch_size)
        elif self.method == "gradient":
            relevance = gradient_rollout(attention, gradients, **readout)
        elif self.method == "rollout":
            relevance = attention_rollout(attention, self.head_fusion, self.discard_ratio, **readout)
        else:
            relevance = layer_rows[:, self.layer]
        return {
            "probabilities": ops.softmax(ops.cast(logits, "float32"), axis=-1),
            "relevance": ops.reshape(relevance, (-1, *map_shape(self.classifier, self.method))),
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


def map_shape(model: ImageClassifier, method: str) -> tuple[int, int]:
    """``(rows, cols)`` of one map of ``method``: the image the model sees for maps per pixel, the
    patch grid for maps per patch."""
    if map_resolution(method) == "pixels":
        return tuple(model.spec.image_size)
    return model.backbone.grid_shape(model.spec.image_size)


def _explained_classes(logits, targets):
    """The class each image is explained for: its target, or its predicted class where the target is ``-1``."""
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    return ops.where(targets < 0, predicted, ops.cast(targets, "int32"))


def _class_scores(logits, classes):
    """Sum over the batch of each image's logit of its class in ``classes``."""
    return ops.sum(ops.take_along_axis(logits, ops.expand_dims(classes, -1), axis=-1))


def _scores_with_attention_gradients(classifier: ImageClassifier, images, targets):
    """``(logits, attention, d score / d attention)`` with the backend's own autodiff.

    The gradient is taken against a zero offset added to the attention weights, so no backend
    needs access to intermediate tensors. Images are independent in inference mode, so one
    gradient of the summed scores holds every image's own gradient.
    """
    config = classifier.backbone.config
    tokens = classifier.backbone.token_count(classifier.spec.image_size)
    offset = ops.zeros((ops.shape(images)[0], config.num_layers, config.num_heads, tokens, tokens))

    def score(attention_offset):
        logits, attention = classifier.logits_and_attention(images, attention_offset)
        return _class_scores(logits, _explained_classes(logits, targets)), (logits, attention)

    gradients, (logits, attention) = _gradient_with_aux(score, offset)
    return logits, attention, gradients


def _integrated_gradients(classifier: ImageClassifier, images, classes):
    """``(batch, H, W)`` integrated gradients of each image's score of its class in ``classes``,
    from the image's mean colour, over :data:`INTEGRATED_STEPS` points of the path (one forward
    and backward pass each)."""
    images = ops.cast(images, "float32")
    baseline = mean_colour(images)

    def score(pixels):
        logits, _ = classifier.logits_and_attention(pixels)
        return _class_scores(logits, classes), ()

    gradient_sum = sum(_gradient_with_aux(score, baseline + float(alpha) * (images - baseline))[0]
                       for alpha in path_points(INTEGRATED_STEPS))
    return integrated_gradients(images, baseline, gradient_sum, INTEGRATED_STEPS)


def _gradient_with_aux(function, x):
    """``(d function(x)[0] / d x, function(x)[1])`` with the backend's own autodiff; ``function``
    returns a scalar and auxiliary outputs."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            value, aux = function(x)
        return tape.gradient(value, x), aux
    if backend == "jax":
        import jax

        return jax.grad(function, has_aux=True)(x)
    raise ConfigError(f"gradient and integrated maps need the tensorflow or jax backend, not {backend}; "
                      "use --method rollout")


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
        if method not in ("integrated", "gradient"):
            raise ConfigError(f"{method} maps are the same for every class; use method integrated or gradient "
                              f"to explain class {class_name!r}")
        if class_name not in model.class_names:
            raise ConfigError(f"class {class_name!r} is not one of the model's classes {model.class_names}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")


def explain_images(
    model: ImageClassifier,
    images: ImageSet,
    *,
    method: str = "integrated",
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    layer: int = 0,
    class_name: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> Explanation:
    """:func:`explain` for an already loaded :class:`~vitkit.data.imageset.ImageSet` at the model's size."""
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
        native_maps=normalise_maps(_or_empty(joined["relevance"], (count, *map_shape(model, method)))),
        layer_maps=_or_empty(joined["layer_maps"], (count, layers, rows * cols)).reshape(count, layers, rows, cols),
        method=method,
        resolution=map_resolution(method),
        head_fusion=head_fusion,
        discard_ratio=float(discard_ratio),
        layer=layer % layers,
        register_tokens=model.backbone.config.register_tokens,
        distillation_token=model.backbone.config.distillation_token,
        pooling=model.backbone.config.pooling,
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
