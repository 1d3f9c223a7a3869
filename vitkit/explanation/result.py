"""The result of an explanation: maps, predictions and how they were made."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from vitkit.data.imageset import ImageSet
from vitkit.explanation.rollout import INTEGRATED_STEPS, resize_maps
from vitkit.prediction import prediction_table


@dataclasses.dataclass
class Explanation:
    """Attention maps and predictions for a set of images.

    Attributes:
        images: the images as the model saw them (:class:`~vitkit.data.imageset.ImageSet`).
        class_names: the model's classes, in output order.
        probabilities: ``(n, classes)`` class probabilities.
        explained: ``(n,)`` index of the class each map explains (the predicted class unless
            another was asked for; rollout and layer maps do not depend on the class).
        native_maps: ``(n, rows, cols)`` maps at the method's own resolution, each divided by its
            maximum (values in [0, 1]): ``(n, height, width)``, one value per pixel of the image
            the model sees, when ``resolution`` is ``pixels`` (integrated gradients);
            ``(n, grid rows, grid cols)``, one value per patch, when it is ``patches`` (the
            attention methods). :meth:`maps` brings either to image resolution.
        layer_maps: ``(n, layers, rows, cols)`` class-token attention of every layer, heads fused
            with ``head_fusion`` (raw attention weights, not normalised).
        method, head_fusion, discard_ratio, layer: how the maps were made.
        resolution: ``pixels`` or ``patches``, what one value of ``native_maps`` covers
            (:func:`~vitkit.explanation.rollout.map_resolution` of the method).
        distillation_token: whether the model has DeiT's distillation token (left out of every
            map, like the class token itself).
        register_tokens, pooling: the model's register tokens (left out of every map) and
            pooling (``token``: maps read the class token's row; ``mean``: the mean of the
            patch tokens' rows).
    """

    images: ImageSet
    class_names: list[str]
    probabilities: np.ndarray
    explained: np.ndarray
    native_maps: np.ndarray
    layer_maps: np.ndarray
    method: str
    resolution: str
    head_fusion: str
    discard_ratio: float
    layer: int
    register_tokens: int = 0
    distillation_token: bool = False
    pooling: str = "token"

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
        """``(k, height, width)`` float32 maps at image resolution, values in [0, 1]: maps per pixel
        as they are, maps per patch resized bilinearly (:func:`~vitkit.explanation.rollout.resize_maps`)."""
        chosen = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.resolution == "pixels":
            return self.native_maps[chosen].astype(np.float32)
        return np.clip(resize_maps(self.native_maps[chosen], self.image_size), 0.0, 1.0)

    def pixels(self, indices: Sequence[int]) -> np.ndarray:
        """``(k, height, width, 3)`` uint8 images the maps belong to."""
        return self.images.read(np.asarray(indices, dtype=np.int64))

    def description(self) -> str:
        """The method in words, e.g. ``rollout (heads: max, discard ratio 0.9)``."""
        if self.method == "integrated":
            return (f"integrated gradients (Sundararajan et al. 2017, {INTEGRATED_STEPS} steps from the mean colour), "
                    "positive part per pixel, blurred by a Gaussian of half a patch")
        if self.method == "gradient":
            return "gradient relevance (Chefer et al. 2021)"
        details = f"heads: {self.head_fusion}"
        if self.method == "rollout":
            return f"rollout ({details}, discard ratio {self.discard_ratio:g})"
        return f"layer {self.layer} class-token attention ({details})"

    def tokens_read(self) -> str:
        """Which tokens the maps read and which they leave out, in words."""
        if self.resolution == "pixels":
            height, width = self.image_size
            return f"no tokens: one value for each of the {height} x {width} pixels"
        patches = self.native_maps.shape[1] * self.native_maps.shape[2]
        row = ("the mean of the patch tokens' rows (the model pools by the mean)" if self.pooling == "mean"
               else "the class token's row")
        left_out = ["the class token"] + (["the distillation token"] if self.distillation_token else [])
        left_out += [f"{self.register_tokens} register tokens"] if self.register_tokens else []
        listed = ", ".join(left_out[:-1]) + " and " + left_out[-1] if len(left_out) > 1 else left_out[0]
        return f"{row} over the {patches} patch tokens; left out: {listed}"

    def table(self) -> pd.DataFrame:
        """One row per image: the prediction table plus ``explained`` (the class each map explains)."""
        table = prediction_table(self.images, self.probabilities, self.class_names)
        table.insert(3, "explained", [self.class_names[i] for i in self.explained])
        return table
