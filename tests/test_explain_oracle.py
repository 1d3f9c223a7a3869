"""Rollout against vit-keras' ``visualize.attention_map`` on the same weights."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

from test_explain import sharpen, shapes
from vitkit.attention_figures import masked
from vitkit.data import load_images
from vitkit.explain import explain_images

pytestmark = pytest.mark.oracle

vit_keras = pytest.importorskip("vit_keras", reason="vit-keras (the compat extra) is not installed")
from vit_keras import visualize, vit  # noqa: E402


def vitkit_path(vit_keras_path: str) -> str:
    """``Transformer_encoderblock_0/MlpBlock_3/Transformer_encoderblock_0_Dense_0/kernel`` -> ``vit/encoderblock_0/MlpBlock_3/Dense_0/kernel``."""
    path = re.sub(r"Transformer_encoderblock_\d+_(Dense_\d)", r"\1", vit_keras_path)
    return "vit/" + re.sub(r"^Transformer_", "", path)


def vit_keras_twin(model, layers: int, image_size: int):
    """A vit-keras model with the backbone weights of a vitkit classifier, copied by name."""
    config = model.backbone.config
    twin = vit.build_model(image_size=image_size, patch_size=config.patch_size, num_layers=layers,
                           hidden_size=config.hidden_size, num_heads=config.num_heads, name="twin",
                           mlp_dim=config.mlp_dim, classes=len(model.class_names), dropout=0.0,
                           include_top=False)
    ours = {variable.path: variable for variable in model.backbone.weights}
    assert len(twin.weights) == len(ours)
    for variable in twin.weights:
        variable.assign(np.asarray(ours[vitkit_path(variable.path)].value))
    return twin


def vit_keras_mask(twin, image: np.ndarray, monkeypatch) -> np.ndarray:
    """The mask ``attention_map`` computes: the result of its final ``cv2.resize``, before it multiplies the image."""
    real_cv2 = visualize.cv2
    results = []

    def resize(*args, **kwargs):
        results.append(real_cv2.resize(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(visualize, "cv2", types.SimpleNamespace(resize=resize))
    product = visualize.attention_map(twin, image)
    monkeypatch.setattr(visualize, "cv2", real_cv2)
    mask = results[-1]
    np.testing.assert_array_equal(product, (mask[..., np.newaxis] * image).astype("uint8"))
    return mask


def test_rollout_equals_vit_keras_attention_map(tiny_model, monkeypatch):
    model = sharpen(tiny_model(num_layers=3), seed=5)
    twin = vit_keras_twin(model, layers=3, image_size=32)
    images, labels = shapes(count=4, seed=3)
    result = explain_images(model, load_images((images, labels), (32, 32)), head_fusion="mean",
                            discard_ratio=0.0, progress=False)
    ours = result.maps()
    differences = []
    for image, our_map in zip(images, ours):
        theirs = vit_keras_mask(twin, image, monkeypatch)
        assert theirs.shape == our_map.shape
        differences.append(np.abs(our_map - theirs).max())
        # the masked panel of the figures is vit-keras' output, up to rounding of the product
        assert np.abs(masked(image, our_map).astype(int) - (theirs[..., None] * image).astype("uint8")).max() <= 1
    print(f"largest difference from vit-keras: {max(differences):.2e}")
    assert max(differences) < 1e-4
    assert np.ptp(ours) > 0.5  # the maps are not flat, so the comparison means something
