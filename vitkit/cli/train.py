"""The ``train`` command."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitkit.cli.options import add_data_options, add_overwrite, command, load_options, device_count, parse_image_size


# train -----------------------------------------------------------------------------------------

def add_train(commands) -> None:
    parser = command(
        commands, "train", "fine-tune (or train from scratch) a ViT classifier", _run_train,
        description="Train on a manifest (or a photo folder, or a pixel CSV) and save the best epoch "
                    "to --out, a .weights.h5 file that holds the weights and everything needed to "
                    "rebuild the model. NAME.history.csv and NAME.curves.png go beside it.\n\n"
                    "examples:\n"
                    "  vitkit train train.csv --val val.csv --backbone vit_b16 --weights imagenet21k \\\n"
                    "        --out models/products.weights.h5\n"
                    "  vitkit train train.csv --val val.csv --weights hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m \\\n"
                    "        --image-size 224 --out models/products.weights.h5\n"
                    "  vitkit train digits.csv --weights none --out models/digits.weights.h5\n"
                    "  vitkit train train.csv --val val.csv --out models/products.weights.h5 --resume\n"
                    "  vitkit train train.csv --val val.csv --weights none --teacher cnn --out models/products.weights.h5\n"
                    "  vitkit train train.csv --val val.csv --devices all --batch-size 64 --learning-rate 4e-4 \\\n"
                    "        --out models/products.weights.h5\n\n"
                    + _recipes_help() + "\n\n" + _from_scratch_help() + "\n\n" + _teacher_help() + "\n\n"
                    + _devices_help(),
    )
    parser.add_argument("train", metavar="TRAIN", help="training manifest CSV (a split column is honoured), pixel CSV or photo folder")
    parser.add_argument("--val", metavar="VAL", help="validation manifest (default: --val-fraction of TRAIN)")
    parser.add_argument("--out", required=True, type=Path, metavar="MODEL.weights.h5", help="model file to write")

    parser.add_argument("--recipe", choices=("plain", "small-data"),
                        help="default options (see below); default: small-data when training from "
                             "random weights, else plain. Options given explicitly win")
    model = parser.add_argument_group("model")
    from vitkit.models.config import PRESETS, TOKENIZERS

    model.add_argument("--backbone", choices=sorted(PRESETS), help="backbone preset (plain: vit_b16, small-data: vit_micro)")
    model.add_argument("--weights", default="auto",
                       help="auto (imagenet21k for vit_b/l presets, none for small ones), none, "
                            "imagenet21k, imagenet21k+imagenet2012 (2020 checkpoints of --backbone), an AugReg "
                            "name (vit_base_patch16_224.augreg_in21k), hf-hub:ORG/NAME (a timm checkpoint on "
                            "the Hugging Face Hub), a .safetensors / .npz file or checkpoint folder, or a "
                            "NAME.backbone.weights.h5 of `vitkit pretrain`; a "
                            "checkpoint sets the architecture, size, mean/std and interpolation "
                            "(`vitkit weights list`)")
    model.add_argument("--architecture", metavar="TIMM_NAME",
                       help="timm architecture of a .safetensors without config.json, e.g. vit_small_patch14_reg4_dinov2")
    model.add_argument("--image-size", type=parse_image_size, metavar="SIZE",
                       help="input size, 224 or 192x256; images are resized (small ones upsampled) "
                            "to it when loaded (default: the checkpoint's; plain: 224, small-data: 32)")
    model.add_argument("--resize-mode", choices=("stretch", "pad", "crop"), default="stretch",
                       help="how photos reach the input size: stretch, pad (keep aspect) or crop (keep aspect, centre)")
    model.add_argument("--head-width", type=int, default=21, help="hidden width of the head (default 21; 0 = linear)")
    model.add_argument("--preprocess", choices=("tf", "raw"),
                       help="tf scales pixels to [-1, 1]; raw feeds 0-255 (default: the checkpoint's mean and "
                            "std, else tf)")
    for flag, key, kind in (("--patch-size", "patch_size", int), ("--layers", "num_layers", int),
                            ("--hidden-size", "hidden_size", int), ("--heads", "num_heads", int),
                            ("--mlp-dim", "mlp_dim", int), ("--dropout", "dropout", float),
                            ("--attention-dropout", "attention_dropout", float), ("--drop-path", "drop_path", float)):
        model.add_argument(flag, dest=key, type=kind, help=f"override the preset's {key.replace('_', ' ')}")
    model.add_argument("--tokenizer", choices=sorted(TOKENIZERS),
                       help="how images become tokens: " + "; ".join(f"{k} = {v}" for k, v in TOKENIZERS.items())
                            + " (small-data: conv; only patch loads published checkpoints)")
    model.add_argument("--locality-attention", action=argparse.BooleanOptionalAction, default=None,
                       help="locality self-attention: learned temperature, no attention to itself (small-data: on)")
    model.add_argument("--teacher", metavar="cnn|PATH",
                       help="distil from a teacher (DeiT hard distillation, adds a distillation token and "
                            "head; random weights; on --devices, the teacher too): cnn trains the small "
                            "reference CNN first and saves NAME.teacher.keras; PATH is a .keras model "
                            "taking uint8 images of --image-size and returning the run's class probabilities (see below)")
    model.add_argument("--teacher-epochs", type=int, metavar="N",
                       help="epochs of the CNN that --teacher cnn trains first (default: half of --epochs)")

    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, help="most epochs (early stopping may end sooner; plain: 10, small-data: 80)")
    fit.add_argument("--batch-size", type=int, help="images per step, over all --devices (plain: 16, small-data: 32)")
    fit.add_argument("--learning-rate", type=float,
                     help="peak learning rate, for the global batch (plain: 1e-4, small-data: 2e-3)")
    fit.add_argument("--optimizer", choices=("adam", "adamw"), help="plain: adam, small-data: adamw")
    fit.add_argument("--weight-decay", type=float, help="AdamW weight decay (0.05 in both recipes)")
    fit.add_argument("--schedule", choices=("constant", "cosine"),
                     help="constant (halved on plateaus) or cosine decay after --warmup-epochs (plain: constant, small-data: cosine)")
    fit.add_argument("--warmup-epochs", type=int, help="linear warm-up of the cosine schedule (plain: 0, small-data: 5, at most a fifth of the epochs)")
    fit.add_argument("--label-smoothing", type=float, help="plain: 0, small-data: 0.1")
    fit.add_argument("--mixup", type=float, metavar="ALPHA", help="Mixup Beta alpha, 0 = off (off in both recipes: it cost accuracy at from-scratch budgets)")
    fit.add_argument("--cutmix", type=float, metavar="ALPHA", help="CutMix Beta alpha, 0 = off (off in both recipes); with --mixup, each batch uses one")
    fit.add_argument("--class-weights", type=_class_weights, metavar="balanced|A=2,B=1",
                     help="weight the loss by class: balanced, or explicit weights")
    fit.add_argument("--freeze-backbone-epochs", type=int, default=0, help="epochs that train only the head first")
    fit.add_argument("--no-augment", dest="augment", action="store_const", const=False, help="turn off training augmentation")
    fit.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off; plain: 5, small-data: 0)")
    fit.add_argument("--val-fraction", type=float, default=0.1, help="share held out for validation when --val is not given")
    fit.add_argument("--seed", type=int, default=0, help="seed of splits, shuffling, augmentation and initialization")
    fit.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"), default="auto",
                     help="auto = bfloat16 mixed precision on a GPU, float32 on a CPU")
    fit.add_argument("--devices", type=device_count, default=1, metavar="all|N",
                     help="train data-parallel on N devices of this host, or all (every GPU, else every CPU "
                          "device); default 1. --batch-size is the global batch, split over them (see below)")
    fit.add_argument("--resume", action="store_true",
                     help="continue the interrupted run of the same --out from its last saved epoch (NAME.run/)")
    add_overwrite(fit)
    add_data_options(parser)


def _recipes_help() -> str:
    from vitkit.training.recipes import RECIPES, describe

    return "recipes:\n" + "\n".join(
        f"  {recipe.name}: {recipe.summary}.\n    {describe(recipe)}" for recipe in RECIPES.values()
    )


def _from_scratch_help() -> str:
    return (
        "training from scratch (--weights none, no recipe named: small-data):\n"
        "  On varied product photos (bench/photos.py, the generator's hard set: 840 training photos of\n"
        "  4 classes at 64 px) the 80 default epochs reached 80.2% test accuracy on average over nine\n"
        "  GPU runs, against 68.1% for a small CNN's 40 epochs; on 2 CPU cores they took 594-709 s of\n"
        "  training, 1.7-1.9x the CNN's (80.6% against 56.7%). Time grows with photos x epochs x\n"
        "  pixels; --epochs trades it for accuracy. Where a small CNN does about as well as the ViT\n"
        "  (cluttered photos, small products), try --teacher cnn; with many more photos than labels,\n"
        "  `vitkit pretrain`."
    )


def _teacher_help() -> str:
    return (
        "distillation (--teacher cnn|PATH):\n"
        "  The ViT gets a distillation token after the class token and a second head on it. Each\n"
        "  training batch is augmented once; the class head learns the labels (with --label-smoothing),\n"
        "  the distillation head the teacher's argmax on the same augmented images: loss = 0.5 CE +\n"
        "  0.5 CE. The saved model predicts the mean of its two heads; validation loss and accuracy are\n"
        "  those of that mean. cnn first trains the small CNN on the training images (Adam 1e-3, its own\n"
        "  flip/translation/zoom, --teacher-epochs (default: half the run's epochs), the run's batch size\n"
        "  and seed, best epoch by validation loss) and saves it as NAME.teacher.keras beside --out;\n"
        "  --resume reuses it. With --devices both the CNN and the student train data-parallel, on the\n"
        "  same global --batch-size."
    )


def _devices_help() -> str:
    from vitkit.training.parallel import COORDINATOR, NUM_PROCESSES, PROCESS_ID

    return (
        "several devices (--devices all|N):\n"
        "  --batch-size is the global batch, split evenly over the devices (it must divide); losses,\n"
        "  metrics and BatchNorm statistics are those of the global batch, as on one device.\n"
        "  --learning-rate is used as given, for the global batch: vitkit does not scale it. The linear\n"
        "  scaling rule: when the global batch grows k times, multiply the learning rate by k (plain\n"
        "  recipe: 1e-4 at batch 16, so 4e-4 at 64), with a warm-up (--schedule cosine --warmup-epochs 2)\n"
        "  when k is large.\n"
        "  Several hosts train on the JAX backend: start the same command on each host with\n"
        f"  {COORDINATOR}=HOST0:PORT {NUM_PROCESSES}=N {PROCESS_ID}=I (0 on HOST0).\n"
        "  Process 0 writes the outputs; --resume needs --out on a file system all hosts share.\n"
        "  More in docs/multi_device.md."
    )


def _class_weights(text: str) -> str | dict[str, float]:
    if text == "balanced":
        return text
    try:
        return {name.strip(): float(value) for name, value in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"class weights are 'balanced' or name=weight pairs like good=1,dent=3; got {text!r}") from None


def _run_train(args: argparse.Namespace) -> None:
    from vitkit.training.train import train

    overrides = {key: getattr(args, key) for key in (
        "patch_size", "num_layers", "hidden_size", "num_heads", "mlp_dim", "dropout",
        "attention_dropout", "drop_path", "tokenizer", "locality_attention") if getattr(args, key) is not None}
    result = train(
        args.train, args.val, out=args.out, recipe=args.recipe, backbone=args.backbone, weights=args.weights,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, optimizer=args.optimizer, weight_decay=args.weight_decay,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        mixup=args.mixup, cutmix=args.cutmix,
        class_weights=args.class_weights, freeze_backbone_epochs=args.freeze_backbone_epochs,
        augment=args.augment, head_width=args.head_width, preprocess=args.preprocess,
        resize_mode=args.resize_mode, patience=args.patience, val_fraction=args.val_fraction,
        seed=args.seed, precision=args.precision, resume=args.resume, overwrite=args.overwrite,
        devices=args.devices, architecture=args.architecture, teacher=args.teacher,
        teacher_epochs=args.teacher_epochs, **load_options(args), **overrides,
    )
    print(f"recipe:  {result.recipe}")
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    summary = ", ".join(f"{key} {best[key]:.4f}" for key in ("val_accuracy", "val_loss", "accuracy", "loss") if key in best)
    print(f"best epoch {result.best_epoch}: {summary}")
    print(f"model:   {result.model_path}")
    print(f"history: {result.history_path}")
    print(f"curves:  {result.curves_path}")
    if result.teacher_path:
        trained = f" (trained in {result.teacher_seconds:.1f} s)" if result.teacher_seconds is not None else ""
        print(f"teacher: {result.teacher_path}{trained}")
    if result.skipped_path:
        print(f"skipped images: {result.skipped_path}")
