"""The image classifier: uint8 image -> scaling and augmentation -> ViT -> head -> class probabilities.

A backbone with the distillation token (DeiT) feeds a second head of the same structure from that
token; the model's output is then the mean of the two heads' probabilities.

A model is fully described by a :class:`ModelSpec`; the weights file stores that spec beside the
weights, so :func:`vitkit.load_model` rebuilds the model from the file alone.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Sequence

import keras
from keras import ops

from vitkit.models.backbone import VisionTransformer
from vitkit.models.config import SMALL_DATA_OPTIONS, ViTConfig, resolve_config
from vitkit.errors import ConfigError
from vitkit.data.preprocessing import Augment, AugmentConfig, ScaleImages
from vitkit.models.spec import ModelSpec, image_size_pair
from vitkit.models.heads import apply_layers, combined_logits, head_layers, head_logits

if TYPE_CHECKING:
    from vitkit.models.sources import Pretrained

BACKBONE_LAYER = "vit"


@keras.saving.register_keras_serializable(package="vitkit")
class ImageClassifier(keras.Model):
    """A ViT classifier taking uint8 images ``(batch, H, W, 3)`` and returning probabilities.

    With the distillation token (``spec.backbone.distillation_token``) the probabilities are the
    mean of the class head's and the distillation head's (DeiT's prediction); each head's own are
    :meth:`head_probabilities`. Build it with :func:`build_model` or :func:`vitkit.load_model`; ``spec`` describes it and
    ``class_names`` maps output columns to names.
    """

    def __init__(self, spec: ModelSpec | dict[str, Any], **kwargs):
        if isinstance(spec, dict):
            spec = ModelSpec.from_dict(spec)
        height, width = spec.image_size
        images = keras.Input((height, width, 3), dtype="uint8", name="images")
        augment = Augment(spec.augment, seed=spec.seed, name="augment", dtype="float32")
        scale = ScaleImages(spec.preprocess, spec.mean, spec.std, name="scale")
        backbone = VisionTransformer(**spec.backbone.to_dict(), seed=spec.seed, name=BACKBONE_LAYER)
        heads = [head_layers(spec.num_classes, spec.head_width, spec.head_norm)]
        if spec.backbone.distillation_token:
            heads.append(head_layers(spec.num_classes, spec.head_width, spec.head_norm, prefix="dist_"))
        pixels = ops.cast(images, "float32")
        features = backbone(scale(augment(pixels)), distillation=len(heads) > 1)
        head_outputs = [apply_layers(head, each) for head, each in zip(heads, _as_tuple(features))]
        probabilities = (keras.layers.Average(name="heads_mean", dtype="float32")(head_outputs)
                         if len(heads) > 1 else head_outputs[0])
        kwargs.setdefault("name", "vitkit_classifier")
        super().__init__(inputs=images, outputs=probabilities, **kwargs)
        self.spec = spec
        self._parts = (augment, scale, backbone, heads[0])
        self._heads = heads

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def backbone(self) -> VisionTransformer:
        return self._parts[2]

    def attention_model(self) -> keras.Model:
        """A model sharing these weights that returns ``(probabilities, attention)``.

        ``attention`` is ``(batch, layers, heads, tokens, tokens)``, from the same forward pass
        as the probabilities. Build it once and reuse it: each call makes a new model.
        """
        return _WithAttention(self)

    def logits_and_attention(self, images, attention_offset=None):
        """Class scores before the softmax and every block's attention weights, in inference mode.

        Args:
            images: ``(batch, H, W, 3)`` pixels 0-255.
            attention_offset: optional ``(batch, layers, heads, tokens, tokens)`` tensor added to
                the attention weights; pass zeros and differentiate against it to get the
                gradients of the scores with respect to the weights.

        Returns:
            ``(logits (batch, classes), attention (batch, layers, heads, tokens, tokens))``;
            ``softmax(logits)`` equals the model's output.
        """
        pixels = self.augment_pixels(images, training=False)
        *features, attention = self._features(pixels, training=False, return_attention=True,
                                              attention_offset=attention_offset)
        logits = [head_logits(head, each, training=False) for head, each in zip(self._heads, features)]
        return combined_logits(logits), attention

    def augment_pixels(self, images, training=None):
        """Images 0-255 as the backbone's scaling receives them: float32, augmented in training
        mode (the model's own augmentation), unchanged otherwise."""
        augment = self._parts[0]
        return augment(ops.cast(images, "float32"), training=training)

    def head_probabilities(self, pixels, training=None) -> list:
        """Each head's class probabilities ``(batch, classes)`` for :meth:`augment_pixels`' pixels:
        the class head's, then the distillation head's where the backbone has the token."""
        features = self._features(pixels, training=training)
        return [apply_layers(head, each, training) for head, each in zip(self._heads, features)]

    def _features(self, pixels, training=None, **backbone_options) -> tuple:
        """Augmented pixels -> scaling -> the backbone's outputs, as a tuple: the pooled features,
        the distillation token's (with that token), the attention (if asked)."""
        _, scale, backbone, _ = self._parts
        return _as_tuple(backbone(scale(pixels), training=training, distillation=len(self._heads) > 1,
                                  **backbone_options))

    def get_config(self):
        return {"spec": self.spec.to_dict(), "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _WithAttention(keras.Model):
    """Runs a classifier's layers with the backbone's explicit-attention path.

    A subclassed model rather than a second functional graph: Keras' functional checks assume
    a layer returns the same structure on every call, which the backbone does not.
    """

    def __init__(self, classifier: ImageClassifier):
        super().__init__(name=f"{classifier.name}_with_attention")
        self.classifier = classifier

    def call(self, images):
        pixels = self.classifier.augment_pixels(images)
        *features, attention = self.classifier._features(pixels, return_attention=True)
        probabilities = [apply_layers(head, each) for head, each in zip(self.classifier._heads, features)]
        return (probabilities[0] if len(probabilities) == 1 else ops.mean(ops.stack(probabilities), axis=0)), attention


def _as_tuple(outputs) -> tuple:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def build_model(
    class_names: Sequence[str] | int,
    backbone: str | ViTConfig | dict[str, Any] | None = None,
    weights: "str | Pretrained | None" = None,
    image_size: int | Sequence[int] | None = None,
    head_width: int = 21,
    preprocess: str | None = None,
    resize_mode: str = "stretch",
    augment: AugmentConfig | dict[str, Any] | bool | None = True,
    seed: int | None = None,
    interpolation: str | None = None,
    architecture: str | None = None,
    **backbone_overrides: Any,
) -> ImageClassifier:
    """Build a ViT classifier, optionally starting from pretrained backbone weights.

    Args:
        class_names: class names in output order, or a number of classes (named ``0..n-1``).
        backbone: preset name (``vit_b16``, ``vit_b32``, ``vit_l16``, ``vit_l32``, ``vit_s16``,
            ``vit_ti16``, ``vit_small``, ``vit_micro``), a :class:`ViTConfig` or its dict;
            by default the checkpoint's architecture, else ``vit_b16``.
        weights: ``None``/``"none"`` (random), ``"imagenet21k"`` or
            ``"imagenet21k+imagenet2012"`` (the 2020 checkpoint of the preset), an AugReg name
            (``vit_base_patch16_224.augreg_in21k``), ``"hf-hub:ORG/NAME"``, or a path to a
            ``.safetensors`` (timm), a folder with ``config.json`` and ``model.safetensors``,
            a Flax ``.npz``, or a ``.backbone.weights.h5`` of ``vitkit pretrain``, which sets the
            whole architecture, tokenizer and attention included (see :mod:`vitkit.models.sources`).
        image_size: input size in pixels, an int or (height, width); by default the
            checkpoint's (its position embedding is resampled for another size), else 224.
        head_width: hidden width of the head (21 as in the original recipe; 0 for linear).
        preprocess: ``"tf"`` to scale pixels to [-1, 1], ``"raw"`` to feed 0-255; by default
            what the checkpoint was trained with (``"normalize"`` with its mean and std for
            timm checkpoints that record them), else ``"tf"``.
        resize_mode: ``stretch``, ``pad`` or ``crop`` (applied when images are loaded).
        augment: ``True`` for the default augmentation, ``False``/``None`` for none, or an
            :class:`AugmentConfig` / dict of its fields.
        seed: seed of augmentation and dropout randomness.
        interpolation: ``bilinear`` or ``bicubic`` image resizing; by default the checkpoint's
            (bicubic for timm's), else bilinear.
        architecture: timm architecture name for a ``.safetensors`` without ``config.json``.
        **backbone_overrides: ``patch_size``, ``num_layers``, ``hidden_size``, ``num_heads``,
            ``mlp_dim``, ``dropout``, ``attention_dropout``, ``drop_path``,
            ``representation_size``, and for training from scratch ``tokenizer`` (``patch``,
            ``conv``, ``shifted``), ``locality_attention`` and ``distillation_token`` (DeiT: a
            second head, see :class:`ImageClassifier`).

    Returns:
        An :class:`ImageClassifier` (a ``keras.Model``) taking uint8 images.

    Example:
        >>> model = build_model(["good", "bad"], backbone="vit_micro", image_size=32)
        >>> model.predict(np.zeros((1, 32, 32, 3), "uint8")).shape
        (1, 2)
        >>> model = build_model(["good", "bad"], weights="hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m",
        ...                     image_size=224)
    """
    from vitkit.models.sources import PRESET_WEIGHTS, Pretrained, pretrained_source

    if isinstance(class_names, int):
        class_names = [str(i) for i in range(class_names)]
    weights = None if weights in (None, "none") else weights
    pretrained = weights if isinstance(weights, Pretrained) else None
    if weights is not None and pretrained is None and weights not in PRESET_WEIGHTS:
        pretrained = pretrained_source(str(weights), architecture, backbone_overrides.get("num_heads"))
    size = image_size_pair(image_size if image_size is not None else (pretrained.image_size if pretrained else 224))
    config = resolve_config(_base_backbone(backbone, pretrained, backbone_overrides), size, **backbone_overrides)
    if weights is not None and not config.checkpoint_compatible and not (pretrained and pretrained.full_architecture):
        raise ConfigError(
            f"pretrained weights ({weights if pretrained is None else pretrained.label}) need the original ViT "
            f"tokenizer and attention, but this backbone has tokenizer={config.tokenizer!r}, locality_attention="
            f"{config.locality_attention} (options for training from scratch, set by the small-data recipe): "
            f"use --weights none, or --recipe plain for fine-tuning"
        )
    if weights is not None and config.distillation_token and not (pretrained and pretrained.full_architecture):
        raise ConfigError(
            f"pretrained weights ({weights if pretrained is None else pretrained.label}) have no distillation token "
            f"(--teacher adds one): distil into a model trained from random weights (--weights none)"
        )
    if weights is not None and config.representation_size is None:  # the checkpoint's pre_logits layer, if any
        from vitkit.models.weights import checkpoint_representation_size

        found = pretrained.config.representation_size if pretrained else checkpoint_representation_size(weights, config)
        config = dataclasses.replace(config, representation_size=found)
    preparation = pretrained.preparation(preprocess, interpolation) if pretrained else {
        "preprocess": preprocess or "tf", "interpolation": interpolation or "bilinear"}
    spec = ModelSpec(
        class_names=tuple(str(name) for name in class_names),
        image_size=size,
        backbone=config,
        head_width=head_width,
        resize_mode=resize_mode,
        augment=_augment_config(augment),
        seed=seed,
        **preparation,
    )
    model = ImageClassifier(spec)
    if pretrained is not None:
        pretrained.load_into(model.backbone, size)
    elif weights is not None:
        from vitkit.models.weights import load_backbone_checkpoint

        load_backbone_checkpoint(model.backbone, weights, size)
    return model


_ARCHITECTURE_KEYS = ("patch_size", "num_layers", "hidden_size", "num_heads", "mlp_dim", "representation_size")


def _base_backbone(backbone, pretrained, overrides: dict[str, Any]):
    """The backbone to build: given, else the checkpoint's, else ``vit_b16``; a checkpoint that
    fixes its architecture takes no other one."""
    if pretrained is None:
        return "vit_b16" if backbone is None else backbone
    if backbone is not None and pretrained.fixed:
        raise ConfigError(f"{pretrained.label} sets the architecture ({pretrained.architecture or 'from the file'}); "
                          f"drop --backbone {backbone if isinstance(backbone, str) else ''}".rstrip())
    fixed_keys = _ARCHITECTURE_KEYS + (SMALL_DATA_OPTIONS if pretrained.full_architecture else ())
    for key in fixed_keys:
        given, found = overrides.get(key), getattr(pretrained.config, key)
        if given is not None and given != found and pretrained.fixed:
            raise ConfigError(f"{pretrained.label} has {key.replace('_', ' ')} {found}; drop the option that sets {given}")
    return pretrained.config if backbone is None else backbone


def _augment_config(augment: AugmentConfig | dict[str, Any] | bool | None) -> AugmentConfig:
    if isinstance(augment, AugmentConfig):
        return augment
    if isinstance(augment, dict):
        return AugmentConfig.from_dict(augment)
    return AugmentConfig() if augment else AugmentConfig.off()
