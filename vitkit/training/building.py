"""The model of a training run: the random streams seeded, then the classifier built under the
training precision's dtype policy."""

from __future__ import annotations

import random
from typing import Sequence

import keras
import numpy as np

from vitkit.models.classifier import ImageClassifier, build_model
from vitkit.training.settings import RunSettings


def seed_everything(seed: int) -> None:
    """Seed every random stream a run draws from (Python, NumPy, the backend), for identical runs."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
        return
    # keras.utils.set_random_seed imports TensorFlow whenever it is installed, only to seed it;
    # on other backends do the rest of what it does without that import.
    from keras.src.backend.common import global_state

    global_state.set_global_attribute("global_random_seed", seed)
    global_state.set_global_attribute("global_seed_generator", None)
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def build_run_model(settings: RunSettings, class_names: Sequence[str], precision: str,
                    pretrained: bool = True) -> ImageClassifier:
    """The run's classifier, variables in ``precision``'s dtype policy (``float32``, ``mixed_bfloat16``...).

    ``pretrained=False`` leaves out the backbone checkpoint, for a model whose weights are
    loaded next anyway.
    """
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return build_model(list(class_names), settings.backbone, settings.weights if pretrained else None,
                           settings.image_size, **settings.model_options())
    finally:
        keras.config.set_dtype_policy(previous_policy)
