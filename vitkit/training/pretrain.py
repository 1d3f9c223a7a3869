"""Self-supervised pre-training on the user's own photos, by masked image modelling
(:mod:`vitkit.models.masked`, ``method="simmim"``) or self-distillation
(:mod:`vitkit.models.dino`, ``method="dino"``): no classes needed; the backbone it writes is then
fine-tuned with ``vitkit train --weights NAME.backbone.weights.h5``.

The steps are those of :func:`vitkit.train`: settings resolved
(:mod:`~vitkit.training.pretrainsettings`), outputs checked, images read through the same loading
and cache (:mod:`~vitkit.training.pretraindata`), the model built under the training precision on
the chosen devices (:mod:`~vitkit.training.parallel`), fit with AdamW, warm-up and cosine decay
(:func:`~vitkit.training.fitting.make_optimizer`), and after each epoch the backbone file,
history and resume state written (:mod:`~vitkit.training.pretrainstate`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from vitkit.data.batches import ImageBatches, follow_epochs
from vitkit.device import (is_out_of_memory, out_of_memory_error, out_of_memory_hint, resolve_precision,
                           under_policy)
from vitkit.errors import ConfigError
from vitkit.models.dino import DinoModel
from vitkit.models.masked import MaskedImageModel
from vitkit.training.building import seed_everything
from vitkit.training.datasets import DataSource
from vitkit.training.fitting import make_optimizer
from vitkit.training.outputs import write_skipped_images
from vitkit.training.parallel import Parallel, plan
from vitkit.training.pretraindata import load_pretraining_images
from vitkit.training.pretrainsettings import PretrainSettings, resolve_pretrain_settings
from vitkit.training.pretrainstate import PretrainKeeper, PretrainPaths, prepare_pretrain_outputs, pretrain_paths


@dataclasses.dataclass
class PretrainResult:
    """What :func:`pretrain` produced."""

    backbone_path: Path
    history: list[dict[str, float]]
    history_path: Path
    images: int
    settings: PretrainSettings
    skipped_path: Path | None = None


def pretrain(
    data: Any,
    *,
    out: str | os.PathLike,
    unlabeled: Any = (),
    method: str = "simmim",
    backbone: str | None = None,
    image_size: int | Sequence[int] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    weight_decay: float | None = None,
    warmup_epochs: int | None = None,
    mask_ratio: float | None = None,
    mask_patch_size: int | None = None,
    loss: str | None = None,
    normalize_target: bool | None = None,
    augment: bool | dict[str, Any] | None = None,
    prototypes: int | None = None,
    local_crops: int | None = None,
    resize_mode: str = "stretch",
    interpolation: str = "bilinear",
    seed: int = 0,
    precision: str = "auto",
    label_from: str = "auto",
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    on_bad_image: str = "skip",
    resume: bool = False,
    overwrite: bool = False,
    verbose: int | None = None,
    devices: int | str = 1,
    **backbone_overrides: Any,
) -> PretrainResult:
    """Pre-train a ViT backbone on unlabelled photos and write it to ``out``.

    ``method="simmim"`` (masked image modelling): each image has ``mask_ratio`` of its patches
    set to zero and the backbone, with one linear layer on its patch tokens, learns to predict
    their pixels. ``method="dino"`` (self-distillation): the backbone learns to match, on small
    and large crops of each photo, the output of its own moving average on other large crops; the
    moving average (the teacher) is the backbone written. Options left at ``None`` take the
    defaults of :mod:`vitkit.training.pretrainsettings`: the small-data recipe's backbone at 32
    px, 100 epochs, batch 32, AdamW with warm-up and cosine decay (1e-3 for simmim, 5e-4 for
    dino), mask ratio 0.6.

    Args:
        data: the photos: a folder (searched recursively; sub-folders need not be classes), a
            manifest CSV (its ``test`` rows left out; classes not needed), a pixel CSV, image
            files, or a uint8 array ``x`` (or ``(x, y)``, ``y`` unused).
        out: the backbone file, ``models/NAME.backbone.weights.h5``; ``NAME.backbone.history.csv`` (the
            loss per epoch) goes beside it.
        unlabeled: more photos added to ``data``: a folder, or a list of folders or files.
        method: ``simmim`` (default) or ``dino``; the options of one are refused with the other.
        backbone: preset name (default the small-data recipe's, ``vit_micro``).
        image_size: input size, int or (height, width) (default 32); ``vitkit train`` may
            fine-tune at another size (the position embedding is resampled).
        epochs, batch_size, learning_rate, weight_decay, warmup_epochs: AdamW with linear
            warm-up, then cosine decay to 0 at the last epoch; the batch is the global one.
        mask_ratio: share of each image's patch grid hidden (default 0.6).
        mask_patch_size: side in pixels of the hidden squares, a multiple of the patch size
            (default the patch size).
        loss: ``l1`` (default) or ``mse``, over the hidden patches only.
        normalize_target: predict each patch normalized by its own mean and std (default True).
        augment: True (default: flips, zoom 0.2, translation 0.1), False, or options over those
            (see :class:`~vitkit.data.inputconfig.AugmentConfig`); simmim only (dino's views
            are its augmentation).
        prototypes: dino: the head's output size (default 1024).
        local_crops: dino: local views per photo, at half the image size (default 4; 2 global
            views besides).
        resize_mode, interpolation: how photos are brought to ``image_size``; recorded, and
            used by ``vitkit train --weights`` unless it is told otherwise.
        seed: seed of shuffling, augmentation, masks, views and initialization; fixed seed and data
            give identical weights on CPU.
        precision: ``auto`` (bfloat16 mixed precision on GPU/TPU, float32 on CPU), ``float32``,
            ``mixed_bfloat16`` or ``mixed_float16``.
        label_from, root, cache_dir, on_bad_image: how images are found and read, as for
            :func:`vitkit.train`.
        resume: continue the interrupted run of the same ``out`` and options.
        overwrite: replace existing outputs.
        verbose: Keras verbosity (default: progress bar on a terminal, a line per epoch otherwise).
        devices: ``1``, a number of this host's devices, or ``"all"`` (see :func:`vitkit.train`).
        **backbone_overrides: backbone options (``patch_size``, ``num_layers``, ``hidden_size``,
            ``tokenizer``, ``locality_attention``, ``drop_path``...; see
            :class:`~vitkit.models.config.ViTConfig`) over the small-data recipe's.

    Returns:
        A :class:`PretrainResult`; the backbone file holds the last epoch's backbone.

    Example:
        >>> vitkit.pretrain("photos/", unlabeled="more_photos/", image_size=64, epochs=50,
        ...                 out="models/photos.backbone.weights.h5")
        >>> vitkit.train("data_manifests/products/train.csv", "data_manifests/products/val.csv",
        ...              weights="models/photos.backbone.weights.h5", out="models/products.weights.h5")
    """
    settings = resolve_pretrain_settings(
        method=method, backbone=backbone, image_size=image_size, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        mask_ratio=mask_ratio, mask_patch_size=mask_patch_size, loss=loss, normalize_target=normalize_target,
        augment=augment, prototypes=prototypes, local_crops=local_crops, resize_mode=resize_mode,
        interpolation=interpolation, seed=seed, precision=precision, **backbone_overrides,
    )
    paths = pretrain_paths(out)
    parallel = plan(devices)  # first: joining several hosts must precede any backend work
    parallel.local_batch_size(settings.batch_size)
    resuming = prepare_pretrain_outputs(paths, resume, overwrite, writer=parallel.is_chief)
    seed_everything(settings.seed)
    extra = [unlabeled] if isinstance(unlabeled, (str, os.PathLike)) else list(unlabeled or ())
    images = load_pretraining_images(data, extra, settings, DataSource(label_from, root, cache_dir, on_bad_image))
    skipped_path = write_skipped_images(paths.skipped, images) if parallel.is_chief else None
    precision = resolve_precision(settings.precision)
    # The run's architecture, not the backbone object's: DINO's teacher has no dropout or stochastic depth.
    keeper = PretrainKeeper(paths, settings.record(), {
        "backbone": settings.architecture.to_dict(),
        "image_size": list(settings.image_size), "preprocess": settings.preprocess,
        "resize_mode": settings.resize_mode, "interpolation": settings.interpolation,
        "images": len(images)}, writes=parallel.is_chief)

    with parallel.scope():
        batches = ImageBatches(images, parallel.local_batch_size(settings.batch_size), shuffle=True,
                               seed=settings.seed, drop_remainder=True, shard=parallel.shard,
                               multiple_of=parallel.multiple_of)
        with out_of_memory_hint(settings.batch_size, precision, paths.resume_note):
            model = under_policy(precision, build_pretraining_model, settings, len(batches))
        parallel.prepare(model)
        fit_pretraining(model, batches, settings, keeper, paths=paths, parallel=parallel, resuming=resuming,
                        precision=precision, verbose=verbose)
    keeper.finish()
    return PretrainResult(paths.backbone, keeper.history, paths.history, len(images), settings, skipped_path)


def build_pretraining_model(settings: PretrainSettings, steps_per_epoch: int) -> MaskedImageModel | DinoModel:
    """The model of a run's method (built: every variable exists); DINO's schedules need the run's length."""
    if settings.method == "dino":
        return DinoModel(settings.architecture, settings.image_size, steps_per_epoch=steps_per_epoch,
                         epochs=settings.epochs, prototypes=settings.prototypes, local_crops=settings.local_crops,
                         preprocess=settings.preprocess, seed=settings.seed)
    return build_masked_model(settings)


def build_masked_model(settings: PretrainSettings) -> MaskedImageModel:
    """The masked-image model of a run's settings (built: every variable exists)."""
    return MaskedImageModel(
        settings.architecture, settings.image_size, mask_ratio=settings.mask_ratio,
        mask_patch_size=settings.mask_patch_size, loss=settings.loss, normalize_target=settings.normalize_target,
        augment=settings.augment, preprocess=settings.preprocess, seed=settings.seed,
    )


def fit_pretraining(model: MaskedImageModel | DinoModel, batches: ImageBatches, settings: PretrainSettings,
                    keeper: PretrainKeeper, *, paths: PretrainPaths, parallel: Parallel, resuming: bool,
                    precision: str, verbose: int | None = None) -> None:
    """Compile and fit ``model``, continuing the interrupted run when ``resuming``.

    Raises:
        KeyboardInterrupt: interrupted, with the way to resume.
        ResourceError: out of memory, with what to change.
        ConfigError: the loss became infinite or NaN.
    """
    model.compile(optimizer=make_optimizer(settings, settings.epochs, len(batches)))
    state = keeper.load_state() if resuming else None
    done = state["epochs_done"] if state else 0
    if not parallel.agree(done):
        raise ConfigError(f"the training processes do not all find the interrupted run in {paths.run}; keep "
                          f"--out on a file system they share")
    if state:
        keeper.restore_into(model, state)
    try:
        if done < settings.epochs:
            model.fit(batches, epochs=settings.epochs, initial_epoch=done, shuffle=False,
                      callbacks=[follow_epochs(batches), keeper],
                      verbose=(verbose if verbose is not None else 1 if sys.stdout.isatty() else 2)
                      if parallel.is_chief else 0)
        else:
            keeper.write_backbone(model)  # the run was stopped between its last epoch and its end
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"pre-training interrupted; continue it with --resume (state in {paths.run})") from None
    except Exception as error:
        if is_out_of_memory(error):
            raise out_of_memory_error(settings.batch_size, precision, paths.resume_note()) from None
        raise
    if not math.isfinite(keeper.history[-1].get("loss", math.nan)):
        raise ConfigError(f"pre-training produced a non-finite loss at epoch {keeper.history[-1]['epoch']}; lower "
                          f"the learning rate ({settings.learning_rate}); the last good epoch is in {paths.backbone}")
