"""The model of a training run: the random streams seeded, then the classifier built under the
training precision's dtype policy."""

from __future__ import annotations

import random
from typing import Sequence

import keras
import numpy as np

from vitkit.device import under_policy
from vitkit.models.classifier import ImageClassifier, build_model
from vitkit.models.sources import Pretrained
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
                    pretrained: Pretrained | None = None) -> ImageClassifier:
    """The run's classifier, variables in ``precision``'s dtype policy (``float32``, ``mixed_bfloat16``...).

    ``pretrained``: the checkpoint ``settings.weights`` names, already opened (see
    :func:`~vitkit.models.sources.open_checkpoint`), so that it is not read again.
    """
    return under_policy(precision, build_model, list(class_names), settings.backbone, pretrained or settings.weights,
                         settings.image_size, **settings.model_options())


def rebuild_model(model: ImageClassifier, precision: str) -> ImageClassifier:
    """A new classifier of ``model``'s spec, in ``precision``'s dtype policy, for weights loaded next."""
    return under_policy(precision, ImageClassifier, model.spec)
