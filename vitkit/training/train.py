"""Fine-tuning and training from scratch with Keras ``fit``.

Outputs, for ``--out models/NAME.weights.h5``: the best model (by validation loss) written
atomically whenever it improves, ``NAME.history.csv``, ``NAME.curves.png`` and, while the run
is going, ``NAME.run/`` from which ``resume=True`` continues an interrupted run.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from vitkit.models.config import PRETRAINED_PRESETS
from vitkit.data.batches import ImageBatches, ImageSet, follow_epochs, load_images, write_skipped
from vitkit.device import is_out_of_memory, out_of_memory_error, out_of_memory_hint, resolve_precision
from vitkit.errors import ConfigError, ManifestError
from vitkit.figures import history_figure, save_figure
from vitkit.fileio import check_writable, remove_temporaries
from vitkit.data.manifest import Manifest, read_manifest
from vitkit.data.manifestbuild import stratified_split
from vitkit.data.mixing import MixConfig, MixedBatches
from vitkit.models.classifier import ImageClassifier, build_model, image_size_pair
from vitkit.models.modelfile import load_weights_only
from vitkit.models.sources import open_checkpoint
from vitkit.training.parallel import Parallel, plan
from vitkit.training.recipes import choose_recipe, resolve_options
from vitkit.training.runstate import RunKeeper

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")


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


def output_paths(out: str | Path) -> dict[str, Path]:
    """Files written beside ``models/NAME.weights.h5``."""
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise ConfigError(f"--out must end in .weights.h5, got {out}")
    stem = out.name[: -len(".weights.h5")]
    return {
        "model": out,
        "history": out.with_name(f"{stem}.history.csv"),
        "curves": out.with_name(f"{stem}.curves.png"),
        "skipped": out.with_name(f"{stem}.skipped.csv"),
        "run": out.with_name(f"{stem}.run"),
    }


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
    **backbone_overrides: Any,
) -> TrainResult:
    """Train a ViT classifier and save the best epoch to ``out``.

    Options left at ``None`` take the value of the recipe (see :mod:`vitkit.training.recipes`); those
    given explicitly win. The defaults below are the ``plain`` recipe's.

    Args:
        train_data: training images: a manifest CSV (if it has a ``split`` column, its
            ``train`` rows, and its ``val`` rows for validation), a pixel CSV, a folder tree,
            ``(x, y)`` arrays or a :class:`~vitkit.data.batches.ImageSet`.
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
            :class:`~vitkit.data.preprocessing.AugmentConfig`).
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
    chosen = choose_recipe(recipe, weights, backbone)
    # Opened before any image is read: its size, mean, std and interpolation decide how they are loaded.
    pretrained = open_checkpoint(weights, architecture, backbone_overrides.get("num_heads"))
    given_backbone = backbone
    if pretrained is not None:
        # The checkpoint's size and architecture, so the recipe's defaults do not replace them.
        image_size = image_size or pretrained.image_size
        backbone = backbone or pretrained.config
    settings, backbone_overrides = resolve_options(chosen, {
        "backbone": backbone, "weights": weights, "image_size": image_size, "epochs": epochs,
        "batch_size": batch_size, "learning_rate": learning_rate, "optimizer": optimizer,
        "weight_decay": weight_decay, "schedule": schedule, "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing, "augment": augment, "mixup": mixup, "cutmix": cutmix,
        "patience": patience,
    }, backbone_overrides)
    (backbone, weights, image_size, epochs, batch_size, learning_rate, optimizer, weight_decay,
     schedule, warmup_epochs, label_smoothing, augment, mixup, cutmix, patience) = (
        settings[key] for key in (
            "backbone", "weights", "image_size", "epochs", "batch_size", "learning_rate",
            "optimizer", "weight_decay", "schedule", "warmup_epochs", "label_smoothing",
            "augment", "mixup", "cutmix", "patience"))
    _check_choices(optimizer, schedule, epochs, freeze_backbone_epochs, batch_size)
    mix = MixConfig(mixup, cutmix)
    paths = output_paths(out)
    size = image_size_pair(image_size)
    weights = _resolve_weights(weights, backbone)
    preparation = pretrained.preparation(preprocess) if pretrained else {"preprocess": preprocess or "tf"}
    options = {
        "recipe": chosen.name, "backbone": backbone if pretrained is None else given_backbone, "weights": weights,
        "image_size": list(size), "epochs": epochs,
        "batch_size": batch_size, "learning_rate": learning_rate, "optimizer": optimizer,
        "weight_decay": weight_decay, "schedule": schedule, "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing, "mixup": mixup, "cutmix": cutmix,
        "class_weights": class_weights,
        "freeze_backbone_epochs": freeze_backbone_epochs, "augment": augment,
        "head_width": head_width, "resize_mode": resize_mode,
        **{key: list(value) if isinstance(value, tuple) else value for key, value in preparation.items()},
        "patience": patience, "reduce_lr_patience": reduce_lr_patience,
        "val_fraction": val_fraction, "seed": seed, "precision": precision,
        "classes": list(classes) if classes else None, **backbone_overrides,
    }
    parallel = plan(devices)  # first: joining several hosts must precede any backend work
    local_batch = parallel.local_batch_size(batch_size)
    resuming = _prepare_outputs(paths, resume, overwrite, parallel.is_chief)
    _seed_everything(seed)

    interpolation = preparation.get("interpolation", "bilinear")
    train_set, val_set = _datasets(train_data, val_data, size, (resize_mode, interpolation), val_fraction, seed,
                                   label_from, classes, root, cache_dir, on_bad_image)
    class_names = list(classes) if classes else sorted(set(train_set.labels))
    _check_classes(train_set, val_set, class_names)
    skipped_path = _write_skipped(paths["skipped"], train_set, val_set) if parallel.is_chief else None

    precision = resolve_precision(precision)

    def resume_note() -> str:
        has_state = (paths["run"] / "state.json").is_file()
        return f"the finished epochs are kept: add --resume to continue ({paths['run']})" if has_state else ""

    # Only the first process writes the outputs; the others keep their best epoch in a folder
    # of their own, so that every process loads the same weights the same way at the end.
    private = None if parallel.is_chief else Path(tempfile.mkdtemp(prefix="vitkit-process-"))
    model_options = dict(head_width=head_width, preprocess=preprocess, resize_mode=resize_mode,
                         augment=augment, seed=seed, interpolation=interpolation, **backbone_overrides)
    try:
        with parallel.scope():
            with out_of_memory_hint(batch_size, precision, resume_note):
                model = _under_policy(precision, build_model, class_names, given_backbone if pretrained else backbone,
                                      pretrained or weights, size, **model_options)
            parallel.prepare(model)
            batches, val_batches = _streams(train_set, val_set, class_names, local_batch, mix,
                                            _sample_weights(train_set, class_names, class_weights), seed, parallel)
            keeper = _fit(model, batches, val_batches, parallel, options, paths, private, resuming,
                          precision, verbose, resume_note)
            load_weights_only(model, keeper.model_path)
        if not parallel.is_single:
            # A model of the plain single-device kind, for whatever the caller does next.
            model = _under_policy(precision, ImageClassifier, model.spec)
            load_weights_only(model, keeper.model_path)
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
    if parallel.is_chief:
        save_figure(history_figure(keeper.history), paths["curves"])
    keeper.finish()
    return TrainResult(model, paths["model"], keeper.history, paths["history"], paths["curves"],
                       keeper.best_epoch, skipped_path, chosen.name)


def _streams(train_set: ImageSet, val_set: ImageSet | None, class_names: list[str], local_batch: int,
             mix: MixConfig, sample_weights: np.ndarray | None, seed: int,
             parallel: Parallel) -> tuple[keras.utils.PyDataset, keras.utils.PyDataset | None]:
    """The training and validation batches this process reads (its shard of each global batch)."""
    batches = ImageBatches(train_set, local_batch, class_names, shuffle=True, seed=seed,
                           sample_weights=sample_weights, drop_remainder=True, shard=parallel.shard,
                           multiple_of=parallel.multiple_of)
    if mix.enabled:
        batches = MixedBatches(batches, mix, seed)
    val_batches = None
    if val_set is not None:
        left_out = len(val_set) % parallel.multiple_of
        if left_out and parallel.is_chief:
            warnings.warn(f"validation leaves out {left_out} of {len(val_set)} images so that each of the "
                          f"{parallel.replicas} devices gets an equal share", stacklevel=4)
        val_batches = ImageBatches(val_set, local_batch, class_names, shard=parallel.shard,
                                   multiple_of=parallel.multiple_of)
    return batches, val_batches


def _fit(model: ImageClassifier, batches: keras.utils.PyDataset, val_batches: keras.utils.PyDataset | None,
         parallel: Parallel, options: dict[str, Any], paths: dict[str, Path], private: Path | None,
         resuming: bool, precision: str, verbose: int | None, resume_note) -> RunKeeper:
    """Train ``model`` in its phases (frozen backbone, then all); returns the bookkeeping of the run.

    ``options`` are the run's settings (those a resumed run must repeat).
    """
    epochs, batch_size, learning_rate = options["epochs"], options["batch_size"], options["learning_rate"]
    freeze_backbone_epochs, schedule = options["freeze_backbone_epochs"], options["schedule"]
    monitor = "val_loss" if val_batches is not None else "loss"

    patience = options["patience"]
    early_stopping = keras.callbacks.EarlyStopping(monitor=monitor, patience=patience or epochs + 1)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.5,
                                                patience=options["reduce_lr_patience"], min_lr=1e-7)
    stateful = [early_stopping] + ([plateau] if schedule == "constant" else [])
    model_path = paths["model"] if private is None else private / paths["model"].name
    keeper = RunKeeper(model_path, paths["run"], paths["history"], monitor, options, stateful,
                       extra_metadata={"training": options}, writes_run=private is None)
    state = keeper.load_state() if resuming else None
    done = state["epochs_done"] if state else 0
    if state and state.get("stopped"):
        done = epochs
    if not parallel.agree(done if state else -1):
        raise ConfigError(
            f"the training processes do not all find the interrupted run in {paths['run']}; resuming on "
            f"several hosts reads it on each: keep --out on a file system they share"
        )

    phases = [(0, min(freeze_backbone_epochs, epochs), False), (min(freeze_backbone_epochs, epochs), epochs, True)]
    try:
        for start, end, backbone_trainable in phases:
            if end <= start or done >= end:
                continue
            model.backbone.trainable = backbone_trainable
            model.compile(
                optimizer=_optimizer(options["optimizer"], learning_rate, options["weight_decay"], schedule,
                                     options["warmup_epochs"], epochs - start, len(batches)),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=options["label_smoothing"]),
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            )
            if state and done >= start:
                keeper.restore_into(model, state, within_phase=done > start)
            # The batch order is the stream's own (seeded per epoch); Keras' shuffle would
            # reorder batches with the global random module and break resumed runs.
            model.fit(
                batches, validation_data=val_batches, epochs=end, initial_epoch=max(start, done),
                shuffle=False, callbacks=[follow_epochs(batches)] + stateful + [keeper],
                verbose=_verbosity(verbose) if parallel.is_chief else 0,
            )
            done = end
            if early_stopping.stopped_epoch:
                break
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"training interrupted; continue it with --resume (state in {paths['run']})") from None
    except Exception as error:
        if is_out_of_memory(error):
            raise out_of_memory_error(batch_size, precision, resume_note()) from None
        raise

    if keeper.best_epoch is None:
        raise ConfigError(f"training produced no finite {monitor}; lower the learning rate ({learning_rate})")
    return keeper


def _under_policy(precision: str, make, *args, **kwargs) -> ImageClassifier:
    """``make(*args, **kwargs)``, a model built under the training precision's dtype policy."""
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return make(*args, **kwargs)
    finally:
        keras.config.set_dtype_policy(previous_policy)



def _check_choices(optimizer: str, schedule: str, epochs: int, freeze: int, batch_size: int) -> None:
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if freeze < 0:
        raise ConfigError(f"freeze_backbone_epochs must be >= 0, got {freeze}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")


def _resolve_weights(weights: str | None, backbone: str) -> str | None:
    if weights == "auto":
        return "imagenet21k" if backbone in PRETRAINED_PRESETS else None
    return None if weights in (None, "none") else str(weights)


def _prepare_outputs(paths: dict[str, Path], resume: bool, overwrite: bool, writer: bool = True) -> bool:
    """Check the outputs may be written; returns whether an interrupted run is continued.

    ``writer``: this process writes the outputs and clears what an earlier run left; the other
    processes of a multi-host run make the same checks (so that all stop alike) and only read.
    """
    has_state = (paths["run"] / "state.json").is_file()
    if writer:
        for key in ("model", "history", "curves"):
            remove_temporaries(paths[key])
    if resume and has_state:
        if writer:
            for leftover in paths["run"].glob(".*.tmp*"):
                leftover.unlink(missing_ok=True)
        return True
    if resume and writer:
        print(f"no interrupted run in {paths['run']}; starting from the first epoch", file=sys.stderr)
    if has_state and not overwrite:
        raise ConfigError(
            f"{paths['run']} holds an interrupted run; continue it with --resume, or pass "
            f"--overwrite to start again"
        )
    for key in ("model", "history", "curves", "skipped") if writer else ("model", "history", "curves"):
        check_writable(paths[key], overwrite)
    if writer:
        paths["skipped"].unlink(missing_ok=True)
        shutil.rmtree(paths["run"], ignore_errors=True)
    return False


def _seed_everything(seed: int) -> None:
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


def _datasets(train_data, val_data, size, resizing, val_fraction, seed, label_from, classes,
              root, cache_dir, on_bad_image) -> tuple[ImageSet, ImageSet | None]:
    resize_mode, interpolation = resizing

    def load(data):
        return load_images(data, size, resize_mode, interpolation=interpolation, label_from=label_from,
                           classes=classes, root=root,
                           cache_dir=cache_dir, on_bad_image=on_bad_image)

    if val_data is None and isinstance(train_data, (str, Path)) and str(train_data).lower().endswith(".csv"):
        manifest = _manifest_if_split(Path(train_data), label_from, classes, root)
        if manifest is not None:
            train_data, val_data = manifest.split("train"), manifest.split("val")
            if not len(val_data):
                val_data = None
    train_set = load(train_data)
    if train_set.labels is None:
        raise ManifestError(
            "training images need a class each: give a manifest whose rows all have a label (or "
            "type_dir), a pixel CSV or (x, y)"
        )
    if val_data is not None:
        return train_set, load(val_data)
    if val_fraction <= 0:
        return train_set, None
    splits = stratified_split(train_set.labels, val_fraction, 0.0, seed)
    train_rows = [i for i, s in enumerate(splits) if s == "train"]
    val_rows = [i for i, s in enumerate(splits) if s == "val"]
    if not val_rows:
        return train_set, None
    return train_set.subset(train_rows), train_set.subset(val_rows)


def _manifest_if_split(path: Path, label_from, classes, root) -> Manifest | None:
    from vitkit.data.pixelcsv import is_pixel_csv

    if is_pixel_csv(path):
        return None
    manifest = read_manifest(path, label_from, classes, root)
    return manifest if manifest.has_splits else None


def _check_classes(train_set: ImageSet, val_set: ImageSet | None, class_names: list[str]) -> None:
    if len(class_names) < 2:
        raise ManifestError(f"training data has only the class(es) {class_names}; a classifier needs at least two")
    counts = Counter(train_set.labels)
    missing = [name for name in class_names if counts[name] == 0]
    if missing:
        raise ManifestError(f"no training images for class(es) {missing}; add images or drop them from --classes")
    train_set.label_indices(class_names)
    if val_set is not None:
        val_set.label_indices(class_names)


def _write_skipped(path: Path, *sets: ImageSet | None) -> Path | None:
    # A validation set split off the training set shares its list: keep each row once.
    rows = list(dict.fromkeys(row for image_set in sets if image_set is not None for row in image_set.skipped))
    return write_skipped(rows, path, overwrite=True) if rows else None


def _sample_weights(train_set: ImageSet, class_names: list[str], class_weights) -> np.ndarray | None:
    if class_weights is None:
        return None
    indices = train_set.label_indices(class_names)
    if class_weights == "balanced":
        counts = np.bincount(indices, minlength=len(class_names))
        per_class = len(indices) / (len(class_names) * np.maximum(counts, 1))
    elif isinstance(class_weights, dict):
        unknown = sorted(set(class_weights) - set(class_names))
        if unknown:
            raise ConfigError(f"class weights name unknown class(es) {unknown}")
        per_class = np.array([float(class_weights.get(name, 1.0)) for name in class_names])
    else:
        raise ConfigError(f"class_weights must be 'balanced' or a dict, got {class_weights!r}")
    return per_class[indices].astype(np.float32)


def _optimizer(name: str, learning_rate: float, weight_decay: float, schedule: str,
               warmup_epochs: int, epochs: int, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if schedule == "cosine":
        warmup = warmup_epochs * steps_per_epoch
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else learning_rate,
            decay_steps=max(epochs * steps_per_epoch - warmup, 1),
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=weight_decay)
    return keras.optimizers.Adam(learning_rate=rate)


def _verbosity(verbose: int | None) -> int:
    if verbose is not None:
        return verbose
    return 1 if sys.stdout.isatty() else 2
