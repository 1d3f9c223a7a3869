"""Self-distillation without labels (DINO, Caron et al. 2021): a student backbone learns to give
the same output as a teacher, the exponential moving average of the student itself, across
views of the same photo.

uint8 images -> :class:`~vitkit.models.multicrop.MultiCrop` (2 global views at the image size,
a few local views at half of it) -> scaling (as the classifier does) -> student backbone and
head on every view, teacher backbone and head on the global views -> cross-entropy between the
teacher's sharpened, centred output of each global view and the student's output of every other
view.

- Backbones: the student is the run's backbone (stochastic depth and all); the teacher is the
  same architecture without dropout and stochastic depth, as DINO builds it, and like DINO's it
  runs in training mode: a convolutional stem's batch normalization normalizes each batch by its
  own statistics (and keeps its own moving ones, the file's). With the moving statistics of a
  fresh stem instead, a new teacher's features of different photos are nearly parallel (mean
  cosine 0.95 against 0.63 on the generated product photos), its centred output is nearly
  uniform, and the student learns to give the uniform output (loss at log K) within a few
  epochs. Local views go through the student at their size with the position embedding
  resampled to their grid.
- Head (:class:`DinoHead`): a 3-layer MLP, an L2-normalised bottleneck, then weight-normalised
  prototypes (their scale fixed at 1). Their gradient is held back during the first epoch.
- Teacher output: ``softmax((t - centre) / teacher_temperature)``, the temperature warming up
  linearly over the first 30% of the steps (DINO: 0.04 to 0.07; here 0.01 throughout, see
  :data:`TEACHER_TEMPERATURE`); student: ``softmax(s / 0.1)``.
- Updates, all inside the training step so that ``fit`` runs them on every backend: before each
  step's forward pass the teacher's parameters move to ``m * teacher + (1 - m) * student`` (the
  student as the previous step left it, which is DINO's end-of-step update; ``m`` follows a
  cosine from 0.996 to 1 over the run); after the teacher's forward pass the centre moves to
  ``0.9 * centre + 0.1 * mean teacher output`` of the batch. The teacher, the centre and the step
  count are non-trainable variables: no gradient reaches them and a resumed run restores them.

:attr:`DinoModel.backbone` is the teacher's backbone, the one written to the backbone file, as
DINO keeps the teacher.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from vitkit.data.preprocessing import ScaleImages
from vitkit.models.backbone import VisionTransformer
from vitkit.models.config import ViTConfig
from vitkit.models.multicrop import MultiCrop, local_crop_size

STUDENT_TEMPERATURE = 0.1
# DINO warms its teacher's temperature from 0.04 to 0.07. On the generated product photos (840,
# 64 px, vit_micro) 0.04 -> 0.07 and 0.01 -> 0.02 both drifted to the uniform output within 12
# epochs (loss towards log K) while 0.01 held (loss 2.5-3.4 of log 1024 = 6.9): the teacher
# stays at 0.01; the warm-up takes other end points where they suit.
TEACHER_TEMPERATURE = (0.01, 0.01)
TEACHER_WARMUP_SHARE = 0.3
MOMENTUM = 0.996
CENTRE_MOMENTUM = 0.9
HEAD_HIDDEN = 512
HEAD_BOTTLENECK = 128
# Seeds of the views, away from those of the student's dropout (seed + block).
_CROP_SEED_OFFSET = 20_011


@keras.saving.register_keras_serializable(package="vitkit")
class DinoHead(keras.layers.Layer):
    """DINO's projection head: ``(batch, D)`` features -> ``(batch, prototypes)`` logits.

    Three dense layers (GELU between them) to ``bottleneck``, L2-normalised, then a product with
    ``prototypes`` unit-length columns (weight normalisation with the scale fixed at 1).
    ``frozen`` (a scalar boolean) holds the prototypes' gradient back.
    """

    def __init__(self, prototypes: int, hidden: int = HEAD_HIDDEN, bottleneck: int = HEAD_BOTTLENECK, **kwargs):
        super().__init__(**kwargs)
        self.prototypes = prototypes
        self.hidden = hidden
        self.bottleneck = bottleneck
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.mlp = [keras.layers.Dense(hidden, activation="gelu", kernel_initializer=init, name="dense_0"),
                    keras.layers.Dense(hidden, activation="gelu", kernel_initializer=init, name="dense_1"),
                    keras.layers.Dense(bottleneck, kernel_initializer=init, name="dense_2")]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.mlp:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.directions = self.add_weight(shape=(self.bottleneck, self.prototypes), name="prototypes",
                                          initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, features, frozen=None):
        x = ops.cast(features, self.compute_dtype)
        for layer in self.mlp:
            x = layer(x)
        x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)
        directions = ops.convert_to_tensor(self.directions)
        if frozen is not None:
            directions = ops.where(frozen, ops.stop_gradient(directions), directions)
        directions = directions / ops.maximum(ops.norm(directions, axis=0, keepdims=True), 1e-12)
        return ops.matmul(x, ops.cast(directions, x.dtype))

    def get_config(self):
        return {**super().get_config(), "prototypes": self.prototypes, "hidden": self.hidden,
                "bottleneck": self.bottleneck}


def dino_loss(teacher_probabilities, student_logits, student_temperature: float = STUDENT_TEMPERATURE):
    """Per image, the mean cross-entropy over every (teacher global view ``i``, student view ``v != i``) pair.

    Args:
        teacher_probabilities: ``(2, batch, K)``, the teacher's centred and sharpened output.
        student_logits: ``(views, batch, K)``, the global views first, in the teacher's order.

    Returns:
        ``(batch,)`` losses; their mean is DINO's loss.
    """
    log_student = ops.log_softmax(ops.cast(student_logits, "float32") / student_temperature, axis=-1)
    # cross[i, v, b] = -sum_k teacher[i, b, k] * log student[v, b, k]
    cross = -ops.einsum("ibk,vbk->ivb", teacher_probabilities, log_student)
    teachers, views = teacher_probabilities.shape[0], student_logits.shape[0]
    pairs = 1.0 - ops.eye(teachers, views, dtype="float32")
    return ops.sum(cross * pairs[:, :, None], axis=(0, 1)) / float(teachers * views - teachers)


@keras.saving.register_keras_serializable(package="vitkit")
class DinoLoss(keras.losses.Loss):
    """:func:`dino_loss` as a Keras loss, ``loss(teacher probabilities, student logits)``: the mean
    over the batch, which Keras scales for several replicas as it does its own losses."""

    def __init__(self, name: str = "dino", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, teacher_probabilities, student_logits):
        return dino_loss(teacher_probabilities, student_logits)


def momentum_at(step, total_steps: int, base: float = MOMENTUM):
    """The teacher's momentum at ``step``: cosine from ``base`` at 0 to 1 at ``total_steps``."""
    progress = ops.minimum(ops.cast(step, "float32") / float(max(total_steps, 1)), 1.0)
    return 1.0 - (1.0 - base) * (ops.cos(math.pi * progress) + 1.0) / 2.0


def teacher_temperature_at(step, warmup_steps: int, start: float = TEACHER_TEMPERATURE[0],
                           end: float = TEACHER_TEMPERATURE[1]):
    """The teacher's temperature at ``step``: linear from ``start`` to ``end`` over ``warmup_steps``, then ``end``."""
    progress = ops.minimum(ops.cast(step, "float32") / float(max(warmup_steps, 1)), 1.0)
    return start + (end - start) * progress


class DinoModel(keras.Model):
    """A student and an EMA teacher (backbone + :class:`DinoHead` each) trained by ``fit`` on
    uint8 images alone (see the module).

    ``call`` returns ``{"teacher": (2, batch, K) probabilities, "student": (views, batch, K)
    logits}``; its loss is :class:`DinoLoss` of them.

    Args:
        backbone: the backbone's configuration (complete: patch size set).
        image_size: (height, width) of the images.
        steps_per_epoch, epochs: the run's length, for the schedules.
        prototypes: the head's output size K.
        local_crops: local views per image.
        preprocess: pixel scaling, as :class:`~vitkit.data.preprocessing.ScaleImages`.
        seed: seed of the views, dropout and stochastic depth.
    """

    def __init__(self, backbone: ViTConfig, image_size: tuple[int, int], *, steps_per_epoch: int, epochs: int,
                 prototypes: int = 1024, local_crops: int = 4, preprocess: str = "tf", seed: int | None = None,
                 **kwargs):
        kwargs.setdefault("name", "vitkit_dino_model")
        super().__init__(**kwargs)
        height, width = image_size
        self.image_size = (height, width)
        self.total_steps = steps_per_epoch * epochs
        self.frozen_steps = steps_per_epoch
        self.warmup_steps = max(int(self.total_steps * TEACHER_WARMUP_SHARE), 1)
        self.crops = MultiCrop(self.image_size, local_crop_size(self.image_size, backbone.patch_size), local_crops,
                               seed=None if seed is None else seed + _CROP_SEED_OFFSET, name="crops")
        self.scale = ScaleImages(preprocess, name="scale", dtype="float32")
        self.distillation_loss = DinoLoss()
        self.student = VisionTransformer(**backbone.to_dict(), seed=seed, name="vit")
        self.student_head = DinoHead(prototypes, name="head", dtype="float32")
        still = dataclasses.replace(backbone, dropout=0.0, attention_dropout=0.0, drop_path=0.0)
        self.teacher = VisionTransformer(**still.to_dict(), name="teacher_vit")
        self.teacher_head = DinoHead(prototypes, name="teacher_head", dtype="float32")
        for part in (self.student, self.teacher):
            part.build((None, height, width, 3))
        for head in (self.student_head, self.teacher_head):
            head.build((None, backbone.hidden_size))
        self.teacher.trainable = False
        self.teacher_head.trainable = False
        _normalize_by_batch(self.teacher)
        self.centre = self.add_weight(shape=(1, prototypes), initializer="zeros", trainable=False,
                                      aggregation="mean", name="centre")
        self.step = self.add_weight(shape=(), initializer="zeros", trainable=False, aggregation="mean", name="step")
        self.pairs = [(t, s) for t, s in zip(self.teacher.weights + self.teacher_head.weights,
                                             self.student.weights + self.student_head.weights) if s.trainable]
        for teacher, student in self.pairs:
            teacher.assign(ops.convert_to_numpy(student))  # a copy: JAX must not find one buffer in both
        self.built = True

    @property
    def backbone(self) -> VisionTransformer:
        """The teacher's backbone: what the run writes."""
        return self.teacher

    def update_teacher(self):
        """Move the teacher's parameters towards the student's at this step's momentum."""
        momentum = momentum_at(self.step, self.total_steps)
        for teacher, student in self.pairs:
            teacher.assign(momentum * teacher + (1.0 - momentum) * ops.stop_gradient(ops.cast(student, teacher.dtype)))

    def teacher_probabilities(self, global_views, update_centre: bool):
        """The teacher's ``(2, batch, K)`` sharpened, centred output; moves the centre after it when asked."""
        views = len(global_views)
        logits = self.teacher_head(self.teacher(ops.concatenate(global_views, axis=0), training=True))
        logits = ops.stop_gradient(ops.cast(logits, "float32"))
        temperature = teacher_temperature_at(self.step, self.warmup_steps)
        probabilities = ops.softmax((logits - self.centre) / temperature, axis=-1)
        if update_centre:
            batch_mean = ops.mean(logits, axis=0, keepdims=True)
            self.centre.assign(CENTRE_MOMENTUM * self.centre + (1.0 - CENTRE_MOMENTUM) * batch_mean)
        return ops.reshape(probabilities, (views, -1, probabilities.shape[-1]))

    def student_logits(self, global_views, local_views, training=None):
        """The student's ``(views, batch, K)`` logits, global views first; one pass per view size."""
        frozen = ops.less(self.step, float(self.frozen_steps))
        outputs = []
        for views in (global_views, local_views):
            if views:
                features = self.student(ops.concatenate(views, axis=0), training=training)
                outputs.append(self.student_head(features, frozen=frozen))
        logits = ops.concatenate(outputs, axis=0)
        count = len(global_views) + len(local_views)
        return ops.reshape(logits, (count, -1, logits.shape[-1]))

    def call(self, images, training=None):
        global_views, local_views = self.crops(images)
        global_views = [self.scale(view) for view in global_views]
        local_views = [self.scale(view) for view in local_views]
        if training:
            self.update_teacher()
        teacher = self.teacher_probabilities(global_views, update_centre=bool(training))
        student = self.student_logits(global_views, local_views, training=training)
        if training:
            self.step.assign(self.step + 1.0)
        return {"teacher": teacher, "student": student}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.distillation_loss(y_pred["teacher"], y_pred["student"])


def _normalize_by_batch(frozen: keras.layers.Layer) -> None:
    """Let the batch normalization layers of a non-trainable layer use batch statistics in
    training mode (Keras uses the moving ones in a non-trainable layer) while their scale and
    offset stay out of the optimizer's reach."""
    for layer in frozen._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
            for variable in layer.weights:
                variable.trainable = False
