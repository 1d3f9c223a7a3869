"""Hard distillation with a distillation token (DeiT, Touvron et al. 2021): what a run trains in
place of the classifier when it has a teacher.

:class:`Distiller` wraps the student (an :class:`~vitkit.models.classifier.ImageClassifier`
whose backbone has the distillation token) and the frozen teacher. In training mode each batch
is augmented once, by the student's own augmentation; the student's two heads and the teacher
(in inference mode) see the same augmented pixels. The loss is

    0.5 * CE(class head, true labels, with the run's label smoothing)
  + 0.5 * CE(distillation head, one-hot argmax of the teacher)

In evaluation (validation) the loss is that of the student's own prediction, the mean of its two
heads' probabilities, against the true labels (with the same smoothing), so that the best epoch
is the one whose saved model predicts best; the teacher does not run. Accuracy is that of the
mean prediction throughout. Only the student is ever saved.

On several devices the run builds the Distiller, the student and the teacher in its
distribution's scope (:mod:`~vitkit.training.parallel`): every device holds both, the teacher
labels its own part of the global batch, and the loss and its gradient are those of the global
batch, as on one device.
"""

from __future__ import annotations

import keras
from keras import ops

from vitkit.errors import ConfigError
from vitkit.models.classifier import ImageClassifier


class Distiller(keras.Model):
    """The student and its frozen teacher, trained with the hard-distillation loss (see the module).

    ``call`` returns the class head's probabilities, the distillation head's and the teacher's
    one-hot labels side by side, ``(batch, 3 * classes)`` (the labels are zeros outside training);
    :meth:`compute_loss` and :class:`MeanHeadAccuracy` take them apart.

    Args:
        student: a classifier with the distillation token.
        teacher: a model taking uint8 ``(batch, H, W, 3)`` images and returning class probabilities.
        label_smoothing: smoothing of the true labels of the class head's loss.
    """

    def __init__(self, student: ImageClassifier, teacher: keras.Model, label_smoothing: float = 0.0):
        if not student.spec.backbone.distillation_token:
            raise ConfigError("distillation needs a student whose backbone has the distillation token")
        super().__init__(name=f"{student.name}_distiller")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.num_classes = student.spec.num_classes
        self.label_smoothing = label_smoothing
        self._true_loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        self._teacher_loss = keras.losses.CategoricalCrossentropy()
        self.built = True  # both parts are built

    @property
    def backbone(self):
        """The student's backbone (frozen and unfrozen by the training phases)."""
        return self.student.backbone

    def call(self, images, training=None):
        pixels = self.student.augment_pixels(images, training=training)
        class_head, distillation_head = self.student.head_probabilities(pixels, training=training)
        labels = self.teacher_labels(pixels) if training else ops.zeros_like(class_head)
        return ops.concatenate([class_head, distillation_head, labels], axis=-1)

    def teacher_labels(self, pixels):
        """One-hot argmax of the teacher's prediction for augmented pixels (0-255 floats), which it
        receives rounded to uint8 as it was trained on."""
        images = ops.cast(ops.clip(ops.round(pixels), 0, 255), "uint8")
        probabilities = ops.stop_gradient(self.teacher(images, training=False))
        return ops.one_hot(ops.argmax(probabilities, axis=-1), self.num_classes, dtype="float32")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        class_head, distillation_head, labels = split_outputs(y_pred, self.num_classes)
        if training:
            loss = (0.5 * self._true_loss(y, class_head, sample_weight)
                    + 0.5 * self._teacher_loss(labels, distillation_head, sample_weight))
        else:
            loss = self._true_loss(y, (class_head + distillation_head) / 2, sample_weight)
        # Nothing else: vitkit's classifier adds no losses, and a teacher file's own regularization
        # losses are constants of the frozen teacher (which TensorFlow would add once per device).
        return loss


class MeanHeadAccuracy(keras.metrics.CategoricalAccuracy):
    """Categorical accuracy of the mean of a :class:`Distiller`'s two heads (the student's prediction)."""

    def __init__(self, num_classes: int, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes

    def update_state(self, y_true, y_pred, sample_weight=None):
        class_head, distillation_head, _ = split_outputs(y_pred, self.num_classes)
        return super().update_state(y_true, (class_head + distillation_head) / 2, sample_weight)


def split_outputs(packed, num_classes: int) -> tuple:
    """A :class:`Distiller`'s output -> ``(class head, distillation head, teacher labels)``."""
    n = num_classes
    return packed[:, :n], packed[:, n:2 * n], packed[:, 2 * n:]
