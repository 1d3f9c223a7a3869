"""The small reference CNN: the convolutional peer the benchmarks compare ViTs with, and the
teacher that ``vitkit train --teacher cnn`` trains for distillation."""

from __future__ import annotations

import keras

from vitkit.data.inputconfig import AugmentConfig
from vitkit.data.preprocessing import Augment

# Keras' RandomFlip, RandomTranslation(0.1, 0.1) and RandomZoom(0.1, 0.1), as one fused resampling:
# those layers cannot be compiled by XLA, so on JAX they would run the whole training step op by op.
CNN_AUGMENTATION = AugmentConfig(flip="horizontal", rotation=0.0, zoom=0.1, translation=0.1, brightness=0.0,
                                 contrast=0.0, randaugment_ops=0)


def small_cnn(num_classes: int, image_size: tuple[int, int], seed: int = 0) -> keras.Model:
    """uint8 images ``(batch, H, W, 3)`` -> [-1, 1] -> light augmentation (horizontal flip,
    10 % translation and zoom; training only) -> three conv-BN-ReLU-pool stages of 32/64/128
    filters -> global average pooling -> dropout 0.2 -> softmax over ``num_classes``."""
    layers = keras.layers
    inputs = keras.Input((*image_size, 3), dtype="uint8", name="images")
    x = Augment(CNN_AUGMENTATION, seed=seed, name="augment", dtype="float32")(keras.ops.cast(inputs, "float32"))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.MaxPooling2D()(layers.ReLU()(layers.BatchNormalization()(x)))
    x = layers.Dropout(0.2, seed=seed + 3)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax", dtype="float32")(x), name="small_cnn")
