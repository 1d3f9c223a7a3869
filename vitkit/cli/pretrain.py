"""The ``pretrain`` command."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitkit.cli.options import add_data_options, add_overwrite, command, device_count, parse_image_size

_DESCRIPTION = """\
Pre-train a ViT backbone on your own photos, without classes, and write it to --out
(NAME.backbone.weights.h5); NAME.backbone.history.csv (the loss per epoch) goes beside it.
Then fine-tune a classifier from it with `vitkit train --weights NAME.backbone.weights.h5`: the
file sets the architecture (convolutional stem, locality attention), image size and scaling.

How (--method): simmim (the default), masked image modelling: each photo has --mask-ratio of
its patches set to zero and the backbone learns to predict their pixels from the rest. dino,
self-distillation: the backbone learns to give, for small and large crops of a photo, the output
its own moving average (the teacher, which is what is written) gives for other large crops.
{METHOD_CHOICE}
No labels are read, so every photo you have counts: the labelled ones and any folder of
unlabelled ones (--unlabeled).

When: training from scratch on a few hundred to a few thousand labelled photos (the small-data
recipe) with more photos of the same kind at hand, or no pretrained checkpoint that suits them.
With a good pretrained checkpoint (--weights imagenet21k, an hf-hub model) fine-tune that instead.

examples:
  vitkit pretrain photos/ --unlabeled more_photos/ --image-size 64 --epochs 100 \\
        --out models/photos.backbone.weights.h5
  vitkit train data_manifests/products/train.csv --val data_manifests/products/val.csv \\
        --weights models/photos.backbone.weights.h5 --recipe small-data --out models/products.weights.h5
  vitkit pretrain data_manifests/products/train.csv --out models/photos.backbone.weights.h5 --resume
  vitkit pretrain photos/ --method dino --image-size 64 --out models/photos.backbone.weights.h5

wall time: on a shared 2-core CPU (TensorFlow) the default backbone (vit_micro, conv stem,
locality attention) pre-trains at about {PRETRAIN_RATE} at 64 px, batch 32, a little faster than
its supervised training step (about {TRAIN_RATE}, with RandAugment); 1,000 photos x 100 epochs
at 64 px take {EXAMPLE_TIME}. --method dino (6 views a photo, a teacher besides) runs at about
{DINO_RATE}.
"""

# Measured with bench/pretrain_speed.py (see bench/README.md).
_RATES = {"PRETRAIN_RATE": "450 images/s", "TRAIN_RATE": "400 images/s", "EXAMPLE_TIME": "about 4 minutes",
          "METHOD_CHOICE": "On generated product photos (840, 64 px, 40 epochs then 40 of fine-tuning) dino\n"
                           "fine-tuned to lower accuracy than simmim at about 4x its cost per photo, so simmim is\n"
                           "the default (bench/README.md has the comparison).",
          "DINO_RATE": "a quarter of that"}


def add_pretrain(commands) -> None:
    parser = command(commands, "pretrain", "pre-train a ViT backbone on your own photos, without classes",
                     _run_pretrain, description=_DESCRIPTION.format(**_RATES))
    parser.add_argument("data", metavar="PHOTOS_OR_MANIFEST",
                        help="photo folder (searched recursively), manifest CSV (its test rows are left out) "
                             "or pixel CSV; classes are not needed")
    parser.add_argument("--unlabeled", action="append", default=[], type=Path, metavar="DIR",
                        help="a folder of more photos to learn from (repeat for several)")
    parser.add_argument("--out", required=True, type=Path, metavar="NAME.backbone.weights.h5",
                        help="backbone file to write")

    from vitkit.models.config import PRESETS, TOKENIZERS
    from vitkit.training.recipes import PRETRAIN_METHODS

    model = parser.add_argument_group("backbone (default: the small-data recipe's)")
    model.add_argument("--backbone", choices=sorted(PRESETS), help="backbone preset (default vit_micro)")
    model.add_argument("--image-size", type=parse_image_size, metavar="SIZE",
                       help="input size, 64 or 48x64 (default 32); train may fine-tune at another size")
    for flag, key, kind in (("--patch-size", "patch_size", int), ("--layers", "num_layers", int),
                            ("--hidden-size", "hidden_size", int), ("--heads", "num_heads", int),
                            ("--mlp-dim", "mlp_dim", int), ("--dropout", "dropout", float),
                            ("--drop-path", "drop_path", float)):
        model.add_argument(flag, dest=key, type=kind, help=f"override the preset's {key.replace('_', ' ')}")
    model.add_argument("--tokenizer", choices=sorted(TOKENIZERS), help="how images become tokens (default conv)")
    model.add_argument("--locality-attention", action=argparse.BooleanOptionalAction, default=None,
                       help="locality self-attention (default on)")
    model.add_argument("--resize-mode", choices=("stretch", "pad", "crop"), default="stretch",
                       help="how photos reach the input size")

    fit = parser.add_argument_group("pre-training")
    fit.add_argument("--method", choices=PRETRAIN_METHODS, default="simmim",
                     help="simmim: masked image modelling (default); dino: self-distillation")
    fit.add_argument("--epochs", type=int, help="epochs (default 100)")
    fit.add_argument("--batch-size", type=int, help="images per step, over all --devices (default 32)")
    fit.add_argument("--learning-rate", type=float, help="peak AdamW learning rate (default 1e-3; dino 5e-4)")
    fit.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.05; dino 0.04)")
    fit.add_argument("--warmup-epochs", type=int,
                     help="linear warm-up before the cosine decay (default 10, at most a fifth of the epochs)")
    fit.add_argument("--mask-ratio", type=float, help="simmim: share of each photo's patches hidden (default 0.6)")
    fit.add_argument("--mask-patch-size", type=int, metavar="PIXELS",
                     help="simmim: side of the hidden squares, a multiple of the patch size (default the patch size)")
    fit.add_argument("--loss", choices=("l1", "mse"), help="simmim: error on the hidden pixels (default l1)")
    fit.add_argument("--no-normalize-target", dest="normalize_target", action="store_const", const=False,
                     help="simmim: predict the scaled pixels themselves, not each patch normalized by its mean and std")
    fit.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                     help="simmim: turn off the flips, zoom and translation")
    fit.add_argument("--prototypes", type=int, help="dino: the head's output size (default 1024)")
    fit.add_argument("--local-crops", type=int, metavar="N",
                     help="dino: local views per photo at half the image size, besides 2 global ones (default 4)")
    fit.add_argument("--seed", type=int, default=0,
                     help="seed of shuffling, augmentation, masks, views and initialization")
    fit.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"), default="auto",
                     help="auto = bfloat16 mixed precision on a GPU, float32 on a CPU")
    fit.add_argument("--devices", type=device_count, default=1, metavar="all|N",
                     help="pre-train data-parallel on N devices of this host, or all (see vitkit train --help)")
    fit.add_argument("--resume", action="store_true", help="continue the interrupted run of the same --out")
    add_overwrite(fit)

    add_data_options(parser, classes=False)


def _run_pretrain(args: argparse.Namespace) -> None:
    from vitkit.training.pretrain import pretrain

    overrides = {key: getattr(args, key) for key in (
        "patch_size", "num_layers", "hidden_size", "num_heads", "mlp_dim", "dropout", "drop_path",
        "tokenizer", "locality_attention") if getattr(args, key) is not None}
    result = pretrain(
        args.data, out=args.out, unlabeled=args.unlabeled, method=args.method, backbone=args.backbone,
        image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, mask_ratio=args.mask_ratio,
        mask_patch_size=args.mask_patch_size, loss=args.loss, normalize_target=args.normalize_target,
        augment=args.augment, prototypes=args.prototypes, local_crops=args.local_crops, resize_mode=args.resize_mode, seed=args.seed, precision=args.precision,
        root=args.root, cache_dir=args.cache_dir, on_bad_image=args.on_bad_image, resume=args.resume,
        overwrite=args.overwrite, devices=args.devices, **overrides,
    )
    last = result.history[-1]
    print(f"pre-trained on {result.images} images, {last['epoch']} epochs: loss {last['loss']:.4f} "
          f"(epoch 1: {result.history[0]['loss']:.4f})")
    print(f"backbone: {result.backbone_path}")
    print(f"history:  {result.history_path}")
    if result.skipped_path:
        print(f"skipped images: {result.skipped_path}")
    print(f"next:     vitkit train TRAIN.csv --val VAL.csv --weights {result.backbone_path} "
          f"--out models/NAME.weights.h5")
