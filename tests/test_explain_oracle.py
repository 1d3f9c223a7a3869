"""Rollout against vit-keras' ``visualize.attention_map`` on the same weights."""

from __future__ import annotations

import types

import numpy as np
import pytest

from test_explain import sharpen, shapes
from vitkit.explanation.figures import masked
from vitkit.data.imageset import load_images
from vitkit.explanation.attention import explain_images

pytestmark = pytest.mark.oracle

vit_keras = pytest.importorskip("vit_keras", reason="vit-keras (the compat extra) is not installed")
from vit_keras import visualize  # noqa: E402

from vitkit.models.compat import to_vit_keras, vitkit_variable_path  # noqa: E402


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
    twin = to_vit_keras(model)
    images, labels = shapes(count=4, seed=3)
    result = explain_images(model, load_images((images, labels), (32, 32)), method="rollout", head_fusion="mean",
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


def test_vit_keras_names_map_onto_vitkit_names():
    assert vitkit_variable_path("Transformer_encoderblock_11/MlpBlock_3/Transformer_encoderblock_11_Dense_1/bias") == \
        "vit/encoderblock_11/MlpBlock_3/Dense_1/bias"
    assert vitkit_variable_path("Transformer_posembed_input/pos_embedding") == "vit/posembed_input/pos_embedding"
    assert vitkit_variable_path("class_token/cls") == "vit/class_token/cls"
