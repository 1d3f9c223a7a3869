"""Fine-tuning and training from scratch with Keras ``fit``, as a sequence of steps: the options
resolved into the run's settings (:mod:`~vitkit.training.settings`), the outputs checked
(:mod:`~vitkit.training.outputs`), the data loaded (:mod:`~vitkit.training.datasets`), the model
built (:mod:`~vitkit.training.building`), compiled and fit with its callbacks
(:mod:`~vitkit.training.fitting`), and the outputs written.

Outputs, for ``--out models/NAME.weights.h5``: the best model (by validation loss) written
atomically whenever it improves, ``NAME.history.csv``, ``NAME.curves.png``, ``NAME.teacher.keras``
(``teacher="cnn"``) and, while the run is going, ``NAME.run/`` from which ``resume=True``
continues an interrupted run.

With a ``teacher`` the classifier is trained by hard distillation (DeiT): see
:mod:`~vitkit.training.distill` for the loss and :mod:`~vitkit.training.teacher` for the teacher.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from vitkit.device import out_of_memory_hint, resolve_precision
from vitkit.models.classifier import ImageClassifier
from vitkit.models.modelfile import load_weights_only
from vitkit.models.sources import open_checkpoint
from vitkit.training.building import build_run_model, rebuild_model, seed_everything
from vitkit.training.datasets import DataSource, TrainingData, batch_streams, load_training_data
from vitkit.training.distill import Distiller
from vitkit.training.fitting import fit, make_callbacks, verbosity
from vitkit.training.outputs import (checkpoint_path, output_paths, prepare_outputs, write_outputs,
                                     write_skipped_images)
from vitkit.training.parallel import Parallel, plan
from vitkit.training.settings import CNN_TEACHER, RunSettings, resolve_settings
from vitkit.training.teacher import Teacher, prepare_teacher


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` produced."""

    model: ImageClassifier
    model_path: Path
    history: list[dict[str, float]]
    history_path: Path
    curves_path: Path
    best_epoch: int | None
    skipped_path: Path | None = None
    recipe: str = "plain"
    teacher_path: Path | None = None
    teacher_seconds: float | None = None


def train(
    train_data: Any,
    val_data: Any = None,
    *,
    out: str | Path,
    recipe: str | None = None,
    backbone: str | None = None,
    weights: str | None = "auto",
    image_size: int | Sequence[int] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    warmup_epochs: int | None = None,
    label_smoothing: float | None = None,
    mixup: float | None = None,
    cutmix: float | None = None,
    class_weights: str | dict[str, float] | None = None,
    freeze_backbone_epochs: int = 0,
    augment: bool | dict[str, Any] | None = None,
    head_width: int = 21,
    preprocess: str | None = None,
    resize_mode: str = "stretch",
    patience: int | None = None,
    reduce_lr_patience: int = 2,
    val_fraction: float = 0.1,
    seed: int = 0,
    precision: str = "auto",
    classes: Sequence[str] | None = None,
    label_from: str = "auto",
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    on_bad_image: str = "skip",
    resume: bool = False,
    overwrite: bool = False,
    verbose: int | None = None,
    devices: int | str = 1,
    architecture: str | None = None,
    teacher: str | Path | None = None,
    teacher_epochs: int | None = None,
    **backbone_overrides: Any,
) -> TrainResult:
    """Train a ViT classifier and save the best epoch to ``out``.

    Options left at ``None`` take the value of the recipe (see :mod:`vitkit.training.recipes`); those
    given explicitly win. The defaults below are the ``plain`` recipe's.

    Args:
        train_data: training images: a manifest CSV (if it has a ``split`` column, its
            ``train`` rows, and its ``val`` rows for validation), a pixel CSV, a folder tree,
            ``(x, y)`` arrays or a :class:`~vitkit.data.imageset.ImageSet`.
        val_data: validation images in the same forms; by default ``val_fraction`` of the
            training images, stratified and seeded.
        out: model file, ``models/NAME.weights.h5``.
        recipe: ``plain`` or ``small-data``; by default ``small-data`` when training starts
            from random weights (``weights="none"``, or ``"auto"`` with a small backbone) and
            ``plain`` otherwise. Stored in the model file.
        backbone: preset name (see :data:`vitkit.models.config.PRESETS`); plain: ``vit_b16``, or
            the architecture of the checkpoint ``weights`` names.
        weights: ``auto`` (ImageNet-21k for the B/L presets, none for the small ones),
            ``none``, ``imagenet21k``, ``imagenet21k+imagenet2012``, an AugReg name,
            ``hf-hub:ORG/NAME``, or a ``.safetensors`` / ``.npz`` path or a checkpoint folder
            (see :mod:`vitkit.models.sources`).
        image_size: input size, int or (height, width); default the checkpoint's, else the recipe's.
        epochs: most epochs to train (early stopping may end sooner).
        batch_size: images per step: the global batch, split evenly over ``devices``.
        learning_rate: peak learning rate, for the global batch (not scaled with the devices).
        optimizer: ``adam`` or ``adamw`` (with ``weight_decay``).
        schedule: ``constant`` (with plateau reduction) or ``cosine`` (with ``warmup_epochs``).
        label_smoothing: cross-entropy label smoothing.
        mixup: Mixup Beta alpha (0 = off), see :mod:`vitkit.data.mixing`.
        cutmix: CutMix Beta alpha (0 = off); with both on, each batch uses one of them.
        class_weights: ``balanced``, a dict class -> weight, or None.
        freeze_backbone_epochs: epochs that train only the head before the backbone joins.
        augment: training augmentation (True/False or options, see
            :class:`~vitkit.data.inputconfig.AugmentConfig`).
        head_width: hidden width of the head (21 in the original recipe).
        preprocess: ``tf`` (pixels to [-1, 1]) or ``raw``; default the checkpoint's (its mean
            and std for timm checkpoints), else ``tf``.
        resize_mode: ``stretch``, ``pad`` or ``crop``.
        patience: early-stopping patience in epochs (0 disables early stopping).
        reduce_lr_patience: epochs without improvement before halving the learning rate.
        val_fraction: share of training images held out when ``val_data`` is None.
        seed: seed of splits, shuffling, augmentation and initialization; fixed seed and data
            give identical weights on CPU.
        precision: ``auto`` (bfloat16 mixed precision on GPU/TPU, float32 on CPU),
            ``float32``, ``mixed_bfloat16`` or ``mixed_float16``.
        classes: class names in output order (default: sorted classes of the training data).
        label_from, root: how manifests give classes and where relative paths start.
        cache_dir: decoded-image cache folder.
        on_bad_image: ``skip`` (warn, list in ``NAME.skipped.csv``) or ``error``.
        resume: continue the interrupted run of the same ``out`` and options.
        overwrite: replace existing outputs.
        verbose: Keras verbosity (default: progress bar on a terminal, a line per epoch otherwise).
        devices: ``1`` (one device), a number of this host's devices, or ``"all"`` (every GPU/TPU,
            else every CPU device); data-parallel over them (see :mod:`vitkit.training.parallel`, also for
            several hosts). Only the first process writes the outputs.
        architecture: timm architecture name, for a ``.safetensors`` checkpoint without ``config.json``.
        teacher: distil from a teacher (DeiT's hard distillation; turns on the backbone's
            distillation token, needs random weights): ``"cnn"`` trains
            :func:`~vitkit.models.cnn.small_cnn` first on the same training images and classes
            (its own augmentation, Adam 1e-3, ``teacher_epochs``, the run's global batch size,
            devices and seed, the epoch of lowest validation loss) and saves it as ``NAME.teacher.keras``
            (reused by ``resume``); a path names a ``.keras`` model taking uint8 ``(batch, H, W, 3)`` images
            of the run's size and returning the probabilities of the run's classes. The loss is
            ``0.5 * CE(class head, labels) + 0.5 * CE(distillation head, teacher's argmax)``,
            the teacher seeing the same augmented images; the saved model predicts the mean of
            its two heads. ``TrainResult.teacher_seconds`` is the teacher's training time.
        teacher_epochs: the CNN teacher's epochs (``teacher="cnn"`` only; default: half of ``epochs``).
        **backbone_overrides: backbone options (``patch_size``, ``num_layers``, ``tokenizer``,
            ``locality_attention``, ``drop_path``, ...; see :class:`~vitkit.models.config.ViTConfig`).

    Returns:
        A :class:`TrainResult` whose model holds the best epoch's weights.

    Example:
        >>> result = vitkit.train("data_manifests/products/train.csv",
        ...                       "data_manifests/products/val.csv",
        ...                       backbone="vit_micro", image_size=48, epochs=5,
        ...                       out="models/products.weights.h5")
    """
    # Opened before any image is read: its size, mean, std and interpolation decide how they are loaded.
    pretrained = open_checkpoint(weights, architecture, backbone_overrides.get("num_heads"))
    settings = resolve_settings(
        recipe=recipe, backbone=backbone, weights=weights, image_size=image_size, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer, weight_decay=weight_decay,
        schedule=schedule, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, mixup=mixup,
        cutmix=cutmix, class_weights=class_weights, freeze_backbone_epochs=freeze_backbone_epochs,
        augment=augment, head_width=head_width, preprocess=preprocess, resize_mode=resize_mode,
        patience=patience, reduce_lr_patience=reduce_lr_patience, val_fraction=val_fraction, seed=seed,
        precision=precision, classes=classes, pretrained=pretrained, teacher=teacher,
        teacher_epochs=teacher_epochs, **backbone_overrides,
    )
    paths = output_paths(out)
    parallel = plan(devices)  # first: joining several hosts must precede any backend work
    parallel.local_batch_size(settings.batch_size)  # refuses a batch the devices cannot split, before any reading
    resuming = prepare_outputs(paths, resume, overwrite, writer=parallel.is_chief,
                               trains_teacher=settings.teacher == CNN_TEACHER)
    seed_everything(settings.seed)

    data = load_training_data(train_data, val_data, settings, DataSource(label_from, root, cache_dir, on_bad_image))
    skipped_path = write_skipped_images(paths.skipped, data.train, data.val) if parallel.is_chief else None
    precision = resolve_precision(settings.precision)
    taught = _teacher(settings, data, paths.teacher, resume, precision, verbose, parallel) if settings.teacher else None

    with checkpoint_path(paths, writer=parallel.is_chief) as model_path:
        with parallel.scope():
            with out_of_memory_hint(settings.batch_size, precision, paths.resume_note):
                model = build_run_model(settings, data.class_names, precision, pretrained)
            parallel.prepare(model)
            batches, val_batches = batch_streams(data, settings, parallel)
            callbacks = make_callbacks(settings, paths, model_path, validated=val_batches is not None,
                                       writes_run=parallel.is_chief)
            trained = model if taught is None else Distiller(model, taught.model, settings.label_smoothing)
            keeper = fit(trained, batches, val_batches, settings, callbacks, paths=paths, parallel=parallel,
                         resuming=resuming, precision=precision, verbose=verbose)
            load_weights_only(model, model_path)
        if not parallel.is_single:
            # A model of the plain single-device kind, for whatever the caller does next.
            model = rebuild_model(model, precision)
            load_weights_only(model, model_path)

    write_outputs(keeper, paths, writer=parallel.is_chief)
    return TrainResult(model, paths.model, keeper.history, paths.history, paths.curves,
                       keeper.best_epoch, skipped_path, settings.recipe,
                       taught.path if taught else None, taught.seconds if taught else None)


def _teacher(settings: RunSettings, data: TrainingData, path: Path, resume: bool, precision: str,
             verbose: int | None, parallel: Parallel) -> Teacher:
    """The run's teacher on the run's devices (see :func:`~vitkit.training.teacher.prepare_teacher`),
    then the random streams seeded again: the student starts alike whether the teacher was trained
    or reused."""
    teacher = prepare_teacher(settings.teacher, data.train, data.val, data.class_names, settings.image_size,
                              epochs=settings.teacher_epochs, batch_size=settings.batch_size, seed=settings.seed, path=path,
                              reuse=resume, overwrite=True, precision=precision,
                              verbose=verbosity(verbose) if parallel.is_chief else 0, parallel=parallel)
    seed_everything(settings.seed)
    return teacher
