"""Foreign weights files -> vitkit classifiers: read the dimensions, check, assign all or nothing.

A file from another tool (read by :mod:`vitkit.models.legacy`) carries weights but not what vitkit needs
around them: class names and, for H5 files, how pixels were scaled. Those come from the caller
(``classes=``, ``preprocess=``); every dimension comes from the file. Nothing is assigned
until every array has been found and checked, so a file that does not fit never leaves a
half-loaded model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitkit.models.config import ViTConfig, resolve_config
from vitkit.errors import ConfigError, WeightsError
from vitkit.models.foreign import (
    PUBLISHED_HEADS, BackboneShape, ForeignWeights, HeadLayer, backbone_shape, chain_head,
)
from vitkit.models.legacy import read_weights
from vitkit.models.classifier import ImageClassifier
from vitkit.models.spec import ModelSpec, image_size_pair
from vitkit.data.inputconfig import AugmentConfig
from vitkit.models.weights import backbone_arrays, flax_name

# vit-keras builds its models with dropout 0.1 (only used if training goes on).
_VIT_KERAS_DROPOUT = 0.1


def class_names_from(classes: Sequence[str] | str | os.PathLike) -> list[str]:
    """Class names in the user's order from a list, ``"a,b,c"``, a text file (one per line) or a manifest.

    A manifest CSV gives its classes sorted, as vitkit orders classes when it trains.
    """
    if isinstance(classes, (str, os.PathLike)):
        path = Path(classes)
        if path.is_file():
            if path.suffix.lower() == ".csv":
                from vitkit.data.manifest import read_manifest

                return read_manifest(path).classes()
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if isinstance(classes, os.PathLike) or ("," not in str(classes) and path.suffix):
            raise ConfigError(f"class list file {path} not found")
        return [name.strip() for name in str(classes).split(",") if name.strip()]
    return [str(name) for name in classes]


def load_foreign(
    path: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    preprocess: str | None = None,
    include_top: bool | None = None,
    num_heads: int | None = None,
    image_size: int | Sequence[int] | None = None,
    architecture: str | None = None,
) -> ImageClassifier:
    """Build a classifier from a Flax ``.npz``, vit-keras or legacy Keras-2 H5 file, or a timm
    checkpoint (``.safetensors``, a folder with ``config.json``, or ``hf-hub:ORG/NAME``).

    Args:
        path: the file (see :mod:`vitkit.models.legacy` and :mod:`vitkit.models.sources` for
            the formats).
        classes: class names in the model's output order (a list, ``"a,b,c"``, a text file with
            one name per line, or a manifest CSV); their number must match the file's classifier.
        preprocess: ``"tf"`` (pixels scaled to [-1, 1], what ViT training uses) or ``"raw"``
            (0-255 as is, what the original notebook fed at prediction time). Required for H5
            files; ``.npz`` checkpoints default to ``"tf"``, their own preprocessing.
        include_top: None or True uses the file's classifier head (an error if it has none);
            False keeps only the backbone and puts a new, untrained recipe head for ``classes``
            on it.
        num_heads: attention heads, for H5 files whose width is not a published ViT's (their
            shapes do not tell the heads).
        image_size: input size; by default the size the file's position embedding was
            trained at. Another size resamples the position embedding.
        architecture: timm architecture name, for a ``.safetensors`` file without ``config.json``.

    Example:
        >>> model = load_foreign("old/model.h5", classes=["bottle", "can", "mug"], preprocess="raw")
    """
    from vitkit.models.sources import is_timm_checkpoint

    if is_timm_checkpoint(path):
        return build_from_timm(path, classes, preprocess, include_top, num_heads, image_size, architecture)
    if architecture is not None:
        raise ConfigError(f"{path}: --architecture applies only to timm checkpoints (.safetensors)")
    return build_from_weights(read_weights(path), classes, preprocess, include_top, num_heads, image_size)


def build_from_timm(path, classes, preprocess=None, include_top=None, num_heads=None, image_size=None,
                    architecture=None) -> ImageClassifier:
    """A classifier carrying a timm checkpoint's backbone and, unless ``include_top=False``, its
    classifier (a single Dense layer); the options are :func:`load_foreign`'s."""
    from vitkit.models.sources import pretrained_source

    pretrained = pretrained_source(str(path), architecture, num_heads)
    head = None if include_top is False else pretrained.head()
    if head is None and include_top is not False:
        raise WeightsError(f"{pretrained.description} holds a backbone without a classifier head: pass "
                           f"include_top=False (--no-top) to put a new, untrained head on it")
    if classes is None:
        count = f"its {head[0].shape[1]} " if head is not None else ""
        raise ConfigError(f"{pretrained.description} holds no class names: pass {count}class names in output "
                          f"order with --classes a,b,c (classes=[...] in Python)")
    names = class_names_from(classes)
    if head is not None and len(names) != head[0].shape[1]:
        raise WeightsError(f"{pretrained.description} has {head[0].shape[1]} classes, but {len(names)} class "
                           f"names were given; give exactly {head[0].shape[1]}, in the model's output order")
    size = image_size_pair(image_size if image_size is not None else pretrained.image_size)
    spec = ModelSpec(
        class_names=tuple(names), image_size=size, backbone=resolve_config(pretrained.config, size),
        head_width=0 if head is not None else 21, head_norm=head is None, augment=AugmentConfig.off(),
        **pretrained.preparation(preprocess),
    )
    model = ImageClassifier(spec)
    pairs = list(zip(model.backbone.weights, pretrained.backbone_values(model.backbone, size)))
    if head is not None:
        pairs += list(zip(_head_of(model)[-1].weights, head))
    for variable, value in pairs:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return model


def build_from_weights(weights: ForeignWeights, *options: Any) -> ImageClassifier:
    """A classifier carrying ``weights``, with the options of :func:`load_foreign` after the file."""
    spec, head = foreign_spec(weights, *options)
    model = ImageClassifier(spec)
    _assign(model, weights, head)
    return model


def foreign_spec(
    weights: ForeignWeights,
    classes: Sequence[str] | str | os.PathLike | None,
    preprocess: str | None,
    include_top: bool | None = None,
    num_heads: int | None = None,
    image_size: int | Sequence[int] | None = None,
) -> tuple[ModelSpec, list[HeadLayer] | None]:
    """The spec of the model a foreign file holds, and its head layers in order (None: new head)."""
    source = weights.description
    shape = backbone_shape(weights)
    head = _file_head(weights, shape, include_top)
    if preprocess is None:
        if weights.format != "flax-npz":
            raise ConfigError(
                f"{weights.path} does not record how its pixels were scaled: pass --preprocess tf "
                f"(scaled to [-1, 1], as in training) or --preprocess raw (0-255, as the original "
                f"notebook predicted) (preprocess='tf' / 'raw' in Python)"
            )
        preprocess = "tf"
    if classes is None:
        count = f"its {head[-1].width_out} " if head else ""
        raise ConfigError(
            f"{weights.path} holds no class names: pass {count}class names in output order with "
            f"--classes a,b,c (or a text file / manifest; classes=[...] in Python)"
        )
    names = class_names_from(classes)
    if head and len(names) != head[-1].width_out:
        raise WeightsError(
            f"{source} has {head[-1].width_out} classes, but {len(names)} class names were given "
            f"({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); give exactly "
            f"{head[-1].width_out}, in the order the model was trained with"
        )
    head_width, head_norm = _head_form(head, source) if head else (21, True)
    size = image_size_pair(image_size if image_size is not None else shape.image_size)
    backbone = ViTConfig(
        shape.patch_size, shape.num_layers, shape.hidden_size, _heads(shape, num_heads, source),
        shape.mlp_dim, dropout=_dropout(weights), representation_size=shape.representation_size,
    )
    spec = ModelSpec(
        class_names=tuple(names),
        image_size=size,
        backbone=resolve_config(backbone, size),
        head_width=head_width,
        head_norm=head_norm,
        preprocess=preprocess,
        augment=AugmentConfig.off(),
    )
    return spec, head


def _file_head(weights: ForeignWeights, shape: BackboneShape, include_top: bool | None) -> list[HeadLayer] | None:
    if include_top is False:
        return None
    if not weights.head:
        raise WeightsError(
            f"{weights.description} holds a backbone without a classifier head: pass include_top=False "
            f"(--no-top) to put a new, untrained head on it"
        )
    return chain_head(weights.head, shape.features, weights.description)


def _head_form(head: list[HeadLayer], source: str) -> tuple[int, bool]:
    """``(head_width, head_norm)`` of the vitkit head that has exactly these layers."""
    kinds = tuple(layer.kind for layer in head)
    if kinds == ("batchnorm", "dense", "batchnorm", "dense"):
        return head[1].width_out, True
    if kinds == ("batchnorm", "dense"):
        return 0, True
    if kinds == ("dense",):
        return 0, False
    layers = " -> ".join(f"{layer.name} ({layer.kind})" for layer in head)
    raise WeightsError(
        f"{source}: its head {layers} is not one vitkit builds (BatchNorm -> Dense -> BatchNorm -> "
        f"Dense, BatchNorm -> Dense, or a single Dense)"
    )


def _heads(shape: BackboneShape, requested: int | None, source: str) -> int:
    if requested is not None and shape.num_heads is not None and requested != shape.num_heads:
        raise WeightsError(f"{source} has {shape.num_heads} attention heads, not {requested}")
    heads = requested or shape.num_heads or PUBLISHED_HEADS.get(shape.hidden_size)
    if heads is None:
        raise ConfigError(
            f"{source}: its arrays do not tell the number of attention heads of its width "
            f"{shape.hidden_size}; pass it with --heads N (num_heads=N in Python)"
        )
    if shape.hidden_size % heads:
        raise ConfigError(f"{source}: width {shape.hidden_size} is not divisible by {heads} heads")
    return heads


def _dropout(weights: ForeignWeights) -> float:
    if weights.dropout is not None:
        return weights.dropout
    return 0.0 if weights.format == "flax-npz" else _VIT_KERAS_DROPOUT


def load_foreign_weights(model: ImageClassifier, path: str | os.PathLike, include_top: bool | None = None) -> ForeignWeights:
    """Load a foreign file's weights into an existing classifier, all or nothing.

    The file must have the model's patch size, depth, width, MLP width and heads (the image
    size may differ: the position embedding is resampled). Its classifier head is loaded too
    unless ``include_top=False``; then it must match the model's head and class count.

    Raises:
        WeightsError: one line saying what differs; the model is left untouched.
    """
    weights = read_weights(path)
    shape = backbone_shape(weights)
    _check_fits(model.spec, shape, weights.description)
    head = None if include_top is False or (include_top is None and not weights.head) else \
        _file_head(weights, shape, True)
    if head is not None:
        form = _head_form(head, weights.description)
        have = (model.spec.head_width, model.spec.head_norm)
        if head[-1].width_out != model.spec.num_classes:
            raise WeightsError(
                f"{weights.description} has {head[-1].width_out} classes, the model has "
                f"{model.spec.num_classes}; use include_top=False to load only the backbone"
            )
        if form != have:
            raise WeightsError(
                f"{weights.description}: its head (width {form[0]}, BatchNorm {form[1]}) differs from "
                f"the model's (width {have[0]}, BatchNorm {have[1]}); use include_top=False"
            )
    _assign(model, weights, head)
    return weights


def _check_fits(spec: ModelSpec, shape: BackboneShape, source: str) -> None:
    config = spec.backbone
    checks = (
        ("patch size", shape.patch_size, config.patch_size),
        ("encoder blocks", shape.num_layers, config.num_layers),
        ("width", shape.hidden_size, config.hidden_size),
        ("MLP width", shape.mlp_dim, config.mlp_dim),
        ("attention heads", shape.num_heads, config.num_heads),
        ("representation (pre_logits) width", shape.representation_size, config.representation_size),
    )
    for what, found, expected in checks:
        if found != expected and not (what == "attention heads" and found is None):
            raise WeightsError(f"{source} has {what} {found}, the model has {expected}; nothing was loaded")


def _assign(model: ImageClassifier, weights: ForeignWeights, head: list[HeadLayer] | None) -> None:
    """Compute and check every value first, then assign them all."""
    backbone = model.backbone
    pairs = list(zip(backbone.weights, backbone_arrays(
        weights.backbone, backbone.weights, backbone.grid_shape(model.spec.image_size), weights.description
    )))
    if head is not None:
        pairs += _head_pairs(model, head, weights.description)
    for variable, value in pairs:
        variable.assign(value.astype(variable.dtype))


def _head_pairs(model: ImageClassifier, head: list[HeadLayer], source: str) -> list[tuple[Any, np.ndarray]]:
    pairs = []
    for target, layer in zip(_head_of(model), head):
        for variable in target.weights:
            leaf = variable.path.rsplit("/", 1)[-1]
            value = np.asarray(layer.arrays[leaf])
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightsError(
                    f"{source}: {layer.name}/{leaf} has shape {value.shape}, the model's "
                    f"{variable.path} {tuple(variable.shape)}"
                )
            pairs.append((variable, value))
    return pairs


def _head_of(model: ImageClassifier) -> list:
    return model._parts[3]


def flax_arrays(model: ImageClassifier) -> dict[str, np.ndarray]:
    """The backbone (and a plain Dense top) in the Flax checkpoint's names and shapes.

    Saved with ``numpy.savez`` this is a checkpoint that vit-keras
    (``vit_keras.utils.load_weights_numpy``) and vitkit read like the original ones.
    """
    config = model.spec.backbone
    heads, head_dim = config.num_heads, config.hidden_size // config.num_heads
    arrays = {}
    for variable in model.backbone.weights:
        relative = variable.path.split("/", 1)[1]
        name = flax_name(relative)
        value = np.asarray(variable.numpy())
        if "MultiHeadDotProductAttention_1" in name:
            part = name.split("/")[-2]
            if part == "out":
                value = value.reshape(heads, head_dim, -1) if name.endswith("kernel") else value
            else:
                value = value.reshape(-1, heads, head_dim) if name.endswith("kernel") else value.reshape(heads, head_dim)
        arrays[name] = value
    if model.spec.head_width == 0 and not model.spec.head_norm:
        output = _head_of(model)[-1]
        arrays["head/kernel"], arrays["head/bias"] = (np.asarray(v.numpy()) for v in output.weights)
    return arrays
