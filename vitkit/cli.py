"""The ``vitkit`` command: a thin argparse layer over the Python API.

Every subcommand maps its options onto one API call; errors vitkit raises on purpose
(:class:`~vitkit.errors.VitkitError`) are printed as one line and exit with status 2.
Keras is imported only after the options are parsed, so ``--backend`` takes effect and
``vitkit --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

BACKENDS = ("tensorflow", "jax", "torch")

_DESCRIPTION = """\
Fine-tune Vision Transformers on product photos, save one .weights.h5 file, reload it to
evaluate and predict, and see what the model looks at.

A typical session:
  vitkit manifest build photos/ -o data_manifests/products     # one sub-folder per class
  vitkit train data_manifests/products/train.csv --val data_manifests/products/val.csv \\
        --backbone vit_b16 --weights imagenet21k --out models/products.weights.h5
  vitkit evaluate models/products.weights.h5 data_manifests/products/test.csv --out report/
  vitkit predict models/products.weights.h5 new_photos/ --out predictions.csv --grid grid.png

Try it first on the bundled sample photos: vitkit demo
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    from vitkit.device import configure_xla

    configure_xla()
    warnings.showwarning = _show_warning
    from vitkit.errors import VitkitError

    try:
        _start_keras()
        return int(args.run(args) or 0)
    except VitkitError as error:
        print(f"vitkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        detail = f": {interrupt}" if str(interrupt) else ""
        print(f"vitkit: interrupted{detail}", file=sys.stderr)
        return 130


def _start_keras() -> None:
    """Import Keras, hiding the backend's native start-up log lines (CUDA probing, CPU features).

    Those lines bypass Python logging; ``TF_CPP_MIN_LOG_LEVEL=0`` shows them. TensorFlow probes
    for GPUs only when devices are first listed, so that happens here too, while hidden.
    """
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        sys.stderr.flush()
        saved = os.dup(2)
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
    try:
        import keras

        if quiet and keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()
    finally:
        if quiet:
            os.dup2(saved, 2)
            os.close(saved)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"vitkit: warning: {message}", file=file or sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from vitkit import __version__

    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    parser.add_argument(
        "--backend", choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (_add_demo, _add_manifest, _add_train, _add_evaluate, _add_predict, _add_weights, _add_export, _add_explain):
        add(commands)
    return parser


def _command(commands, name: str, help: str, run: Callable[[argparse.Namespace], int | None],
             description: str | None = None) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=help, description=description or help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


# Shared option groups ------------------------------------------------------------------------

def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading images")
    group.add_argument(
        "--label-from", choices=("auto", "label", "type_dir", "substring"), default="auto",
        help="class of a manifest row: auto = the label column if present, else type_dir; "
             "substring = the --classes name contained in type_dir (the old notebooks' rule)",
    )
    group.add_argument("--classes", type=_name_list, metavar="A,B,C",
                       help="class names in output order (default: sorted names found)")
    group.add_argument("--root", type=Path, metavar="DIR",
                       help="folder that relative base_path values start from (default: the manifest's folder)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="decoded-image cache (default: $VITKIT_CACHE_DIR or ~/.keras/vitkit/cache)")
    group.add_argument("--on-bad-image", choices=("skip", "error"), default="skip",
                       help="skip unreadable images with a warning and list them beside the outputs "
                            "(default), or stop at the first one")


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "label_from": args.label_from, "classes": args.classes, "root": args.root,
        "cache_dir": args.cache_dir, "on_bad_image": args.on_bad_image,
    }


def _add_foreign_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model files of other tools",
        "Flax .npz checkpoints, vit-keras .h5 / .weights.h5 and the original recipe's Keras-2 .h5\n"
        "load directly; they do not record class names (give --classes in output order) nor,\n"
        "for H5 files, how pixels were scaled (give --preprocess)",
    )
    group.add_argument("--preprocess", choices=("tf", "raw"),
                       help="tf: pixels scaled to [-1, 1] (as in training); raw: 0-255 as the original "
                            "notebook fed them at prediction time")
    group.add_argument("--heads", dest="num_heads", type=int, metavar="N",
                       help="attention heads, for H5 files whose width is not a published ViT's")


def _foreign_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"preprocess": args.preprocess, "num_heads": args.num_heads}


def _add_model_use_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """Options every command that runs a model on images shares: batch, overwrite, reading images,
    and model files of other tools."""
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"images per step (default {batch_size})")
    _add_overwrite(parser)
    _add_data_options(parser)
    _add_foreign_model_options(parser)


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give class names separated by commas, e.g. good,scratch,dent")
    return names


def _image_size(text: str) -> int | tuple[int, int]:
    try:
        parts = [int(part) for part in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        return parts[0]
    if len(parts) == 2 and min(parts) > 0:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"image size is a positive integer or HEIGHTxWIDTH, got {text!r}")


def _inputs(values: Sequence[str]) -> Any:
    """One manifest, pixel CSV or folder as given; several files as a list."""
    return values[0] if len(values) == 1 else [Path(value) for value in values]


# demo ------------------------------------------------------------------------------------------

def _add_demo(commands) -> None:
    parser = _command(
        commands, "demo", "train, evaluate and explain a small ViT on the bundled sample photos", _run_demo,
        description="Run the whole path on the sample product photos in examples/photos: build "
                    "manifests, train a small ViT from scratch (no download), save and reload the "
                    ".weights.h5 file, evaluate, predict and draw figures. Takes a few minutes on a CPU.",
    )
    parser.add_argument("--out", type=Path, default=Path("vitkit_demo"), help="output folder (default: vitkit_demo)")
    parser.add_argument("--photos", type=Path, help="photo folder, one sub-folder per class (default: the bundled samples)")
    parser.add_argument("--backbone", default=None, help="backbone preset (default: the small from-scratch one)")
    parser.add_argument("--weights", default="none", help="none, imagenet21k, imagenet21k+imagenet2012 or a .npz path")
    parser.add_argument("--image-size", type=_image_size, default=None, help="input size (default: 48, or 224 with pretrained weights)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    _add_overwrite(parser)


def _run_demo(args: argparse.Namespace) -> None:
    from vitkit.demo import run_demo

    run_demo(out=args.out, photos=args.photos, backbone=args.backbone, weights=args.weights,
             image_size=args.image_size, epochs=args.epochs, seed=args.seed, overwrite=args.overwrite)


# manifest --------------------------------------------------------------------------------------

def _add_manifest(commands) -> None:
    parser = commands.add_parser(
        "manifest", help="build and check image manifests (CSV lists of photos)",
        description="Manifests are CSV files with the columns base_path,type_dir,file_name "
                    "(image = base_path/type_dir/file_name) and optional label and split columns.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    build = _command(
        actions, "build", "write train/val/test manifests for a folder with one sub-folder per class",
        _run_manifest_build,
        description="Walk PHOTO_DIR (PHOTO_DIR/<class>/.../<image>), and write OUT/train.csv, "
                    "OUT/val.csv and OUT/test.csv with a stratified, seeded split.\n\n"
                    "example: vitkit manifest build photos/ -o data_manifests/products",
    )
    build.add_argument("photo_dir", type=Path, metavar="PHOTO_DIR")
    build.add_argument("-o", "--out", type=Path, required=True, metavar="OUT_DIR", help="folder for the manifests")
    build.add_argument("--val", type=float, default=0.15, metavar="FRACTION", help="share of each class for validation (default 0.15)")
    build.add_argument("--test", type=float, default=0.15, metavar="FRACTION", help="share of each class for testing (default 0.15)")
    build.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    _add_overwrite(build)

    check = _command(
        actions, "check", "list every problem of a manifest by row (missing files, unreadable images, classes)",
        _run_manifest_check,
    )
    check.add_argument("manifest", type=Path, metavar="MANIFEST")
    check.add_argument("--label-from", choices=("auto", "label", "type_dir", "substring"), default="auto")
    check.add_argument("--classes", type=_name_list, metavar="A,B,C")
    check.add_argument("--root", type=Path, metavar="DIR")
    check.add_argument("--encoding", help="text encoding (default: UTF-8, then Shift-JIS)")


def _run_manifest_build(args: argparse.Namespace) -> None:
    from vitkit.manifest import SPLITS, build_manifests

    summary = build_manifests(args.photo_dir, args.out, args.val, args.test, args.seed, args.overwrite)
    classes = sorted(set().union(*summary.values()))
    width = max(len(name) for name in classes + ["class"])
    print(f"{'class':<{width}}  {'train':>6} {'val':>6} {'test':>6}")
    for name in classes:
        print(f"{name:<{width}}  " + " ".join(f"{summary[split][name]:>6}" for split in SPLITS))
    print(f"{'total':<{width}}  " + " ".join(f"{sum(summary[split].values()):>6}" for split in SPLITS))
    print(f"wrote {', '.join(str(args.out / f'{split}.csv') for split in SPLITS)}")


def _run_manifest_check(args: argparse.Namespace) -> int:
    from vitkit.manifest import check_manifest

    problems = check_manifest(args.manifest, args.label_from, args.classes, args.root, args.encoding)
    for problem in problems:
        where = f"line {problem.line}" if problem.line else "file"
        print(f"{args.manifest} {where}: {problem.message}")
    print(f"{args.manifest}: {len(problems)} problem(s)" if problems else f"{args.manifest}: no problems found")
    return 1 if problems else 0


# train -----------------------------------------------------------------------------------------

def _add_train(commands) -> None:
    parser = _command(
        commands, "train", "fine-tune (or train from scratch) a ViT classifier", _run_train,
        description="Train on a manifest (or a photo folder, or a pixel CSV) and save the best epoch "
                    "to --out, a .weights.h5 file that holds the weights and everything needed to "
                    "rebuild the model. NAME.history.csv and NAME.curves.png go beside it.\n\n"
                    "examples:\n"
                    "  vitkit train train.csv --val val.csv --backbone vit_b16 --weights imagenet21k \\\n"
                    "        --out models/products.weights.h5\n"
                    "  vitkit train digits.csv --weights none --out models/digits.weights.h5\n"
                    "  vitkit train train.csv --val val.csv --out models/products.weights.h5 --resume\n"
                    "  vitkit train train.csv --val val.csv --devices all --batch-size 64 --learning-rate 4e-4 \\\n"
                    "        --out models/products.weights.h5\n\n"
                    + _recipes_help() + "\n\n" + _devices_help(),
    )
    parser.add_argument("train", metavar="TRAIN", help="training manifest CSV (a split column is honoured), pixel CSV or photo folder")
    parser.add_argument("--val", metavar="VAL", help="validation manifest (default: --val-fraction of TRAIN)")
    parser.add_argument("--out", required=True, type=Path, metavar="MODEL.weights.h5", help="model file to write")

    parser.add_argument("--recipe", choices=("plain", "small-data"),
                        help="default options (see below); default: small-data when training from "
                             "random weights, else plain. Options given explicitly win")
    model = parser.add_argument_group("model")
    from vitkit.config import PRESETS, TOKENIZERS

    model.add_argument("--backbone", choices=sorted(PRESETS), help="backbone preset (plain: vit_b16, small-data: vit_micro)")
    model.add_argument("--weights", default="auto",
                       help="auto (imagenet21k for vit_b/l presets, none for small ones), none, "
                            "imagenet21k, imagenet21k+imagenet2012, or a .npz checkpoint path")
    model.add_argument("--image-size", type=_image_size, metavar="SIZE",
                       help="input size, 224 or 192x256; images are resized (small ones upsampled) "
                            "to it when loaded (plain: 224, small-data: 32)")
    model.add_argument("--resize-mode", choices=("stretch", "pad", "crop"), default="stretch",
                       help="how photos reach the input size: stretch, pad (keep aspect) or crop (keep aspect, centre)")
    model.add_argument("--head-width", type=int, default=21, help="hidden width of the head (default 21; 0 = linear)")
    model.add_argument("--preprocess", choices=("tf", "raw"), default="tf", help="tf scales pixels to [-1, 1] (default); raw feeds 0-255")
    for flag, key, kind in (("--patch-size", "patch_size", int), ("--layers", "num_layers", int),
                            ("--hidden-size", "hidden_size", int), ("--heads", "num_heads", int),
                            ("--mlp-dim", "mlp_dim", int), ("--dropout", "dropout", float),
                            ("--attention-dropout", "attention_dropout", float), ("--drop-path", "drop_path", float)):
        model.add_argument(flag, dest=key, type=kind, help=f"override the preset's {key.replace('_', ' ')}")
    model.add_argument("--tokenizer", choices=sorted(TOKENIZERS),
                       help="how images become tokens: " + "; ".join(f"{k} = {v}" for k, v in TOKENIZERS.items())
                            + " (small-data: conv; only patch loads pretrained weights)")
    model.add_argument("--locality-attention", action=argparse.BooleanOptionalAction, default=None,
                       help="locality self-attention: learned temperature, no attention to itself (small-data: on)")

    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, help="most epochs (early stopping may end sooner; plain: 10, small-data: 50)")
    fit.add_argument("--batch-size", type=int, help="images per step, over all --devices (plain: 16, small-data: 32)")
    fit.add_argument("--learning-rate", type=float,
                     help="peak learning rate, for the global batch (plain: 1e-4, small-data: 1e-3)")
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
    fit.add_argument("--devices", type=_devices, default=1, metavar="all|N",
                     help="train data-parallel on N devices of this host, or all (every GPU, else every CPU "
                          "device); default 1. --batch-size is the global batch, split over them (see below)")
    fit.add_argument("--resume", action="store_true", help="continue the interrupted run of the same --out")
    _add_overwrite(fit)
    _add_data_options(parser)


def _recipes_help() -> str:
    from vitkit.recipes import RECIPES, describe

    return "recipes:\n" + "\n".join(
        f"  {recipe.name}: {recipe.summary}.\n    {describe(recipe)}" for recipe in RECIPES.values()
    )


def _devices_help() -> str:
    from vitkit.parallel import COORDINATOR, NUM_PROCESSES, PROCESS_ID

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


def _devices(text: str) -> int | str:
    from vitkit.errors import ConfigError
    from vitkit.parallel import parse_devices

    try:
        return parse_devices(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _class_weights(text: str) -> str | dict[str, float]:
    if text == "balanced":
        return text
    try:
        return {name.strip(): float(value) for name, value in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"class weights are 'balanced' or name=weight pairs like good=1,dent=3; got {text!r}") from None


def _run_train(args: argparse.Namespace) -> None:
    from vitkit.training import train

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
        devices=args.devices, **_load_options(args), **overrides,
    )
    print(f"recipe:  {result.recipe}")
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    summary = ", ".join(f"{key} {best[key]:.4f}" for key in ("val_accuracy", "val_loss", "accuracy", "loss") if key in best)
    print(f"best epoch {result.best_epoch}: {summary}")
    print(f"model:   {result.model_path}")
    print(f"history: {result.history_path}")
    print(f"curves:  {result.curves_path}")
    if result.skipped_path:
        print(f"skipped images: {result.skipped_path}")


# evaluate / predict ----------------------------------------------------------------------------

def _add_evaluate(commands) -> None:
    parser = _command(
        commands, "evaluate", "measure a model on labelled images and write a report folder", _run_evaluate,
        description="Writes metrics.json (accuracy, loss, top-k, per-class precision/recall/F1), the "
                    "confusion matrix (CSV and PNG), a grid of misclassified images and per-image and "
                    "per-class probability tables.\n\n"
                    "example: vitkit evaluate models/products.weights.h5 data_manifests/products/test.csv --out report/",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a .weights.h5 model file (or a file of another tool)")
    parser.add_argument("data", metavar="TEST", help="labelled manifest (or pixel CSV / class-folder tree)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder")
    _add_model_use_options(parser, batch_size=32)


def _run_evaluate(args: argparse.Namespace) -> None:
    from vitkit.evaluation import evaluate

    metrics = evaluate(args.model, args.data, out=args.out, batch_size=args.batch_size,
                       overwrite=args.overwrite, **_foreign_options(args), **_load_options(args))
    print(f"{metrics['images']} images: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
          f"macro F1 {metrics['macro_f1']:.4f}")
    for name, values in metrics["per_class"].items():
        print(f"  {name}: precision {values['precision']:.3f} recall {values['recall']:.3f} "
              f"F1 {values['f1']:.3f} ({values['support']} images)")
    if metrics["skipped"]:
        print(f"skipped images: {args.out / 'skipped.csv'}")
    print(f"report: {args.out}")


def _add_predict(commands) -> None:
    parser = _command(
        commands, "predict", "predict the class of images", _run_predict,
        description="One row per image: the file, the predicted class, its confidence and every "
                    "class's probability (and the true class when the input has labels).\n\n"
                    "examples:\n"
                    "  vitkit predict models/products.weights.h5 new_photos/ --out predictions.csv\n"
                    "  vitkit predict models/products.weights.h5 a.jpg b.jpg --grid grid.png",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a .weights.h5 model file (or a file of another tool)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="a manifest, a folder, or image files")
    parser.add_argument("--out", type=Path, metavar="CSV", help="write the table here (default: print it)")
    parser.add_argument("--grid", type=Path, metavar="PNG", help="also draw 16 of the images, spread over the set, titled with predictions")
    _add_model_use_options(parser, batch_size=32)


def _run_predict(args: argparse.Namespace) -> None:
    from vitkit.prediction import predict, skipped_path

    table = predict(args.model, _inputs(args.inputs), out=args.out, grid=args.grid,
                    batch_size=args.batch_size, overwrite=args.overwrite, **_foreign_options(args),
                    **_load_options(args))
    shown = [c for c in ("image", "predicted", "confidence", "true") if c in table]
    if args.out is None:
        print(table[shown].to_string(index=False))
    else:
        print(f"{len(table)} predictions: {args.out}")
        if skipped_path(args.out).is_file():
            print(f"skipped images: {skipped_path(args.out)}")
    if args.grid is not None:
        print(f"grid: {args.grid}")


# weights ---------------------------------------------------------------------------------------

def _add_weights(commands) -> None:
    parser = commands.add_parser(
        "weights", help="list, download and convert pretrained and old weights files",
        description="Pretrained checkpoints (the original Flax ViT .npz files) are cached in\n"
                    "$VITKIT_HOME/weights (default ~/.keras/vitkit/weights); vit-keras' cache\n"
                    "~/.keras/weights is searched too.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    _command(actions, "list", "show the known checkpoints, the cache folders and which checkpoints are present",
             _run_weights_list)

    download = _command(
        actions, "download", "download a checkpoint into the cache (progress bar, SHA-256, atomic write)",
        _run_weights_download,
        description="Download one of the checkpoints `vitkit weights list` shows. The file is written\n"
                    "under a temporary name and moved into place only when complete; its SHA-256 is\n"
                    "recorded beside it and checked on later use.\n\n"
                    "example: vitkit weights download ViT-B_16_imagenet21k",
    )
    download.add_argument("name", metavar="NAME", help="checkpoint name, e.g. ViT-B_16_imagenet21k (.npz optional)")
    download.add_argument("--sha256", metavar="HEX", help="expected SHA-256; a download that differs is discarded")
    download.add_argument("--force", action="store_true", help="download even if the checkpoint is already cached")

    convert = _command(
        actions, "convert", "turn a weights file of another tool into a vitkit model file",
        _run_weights_convert,
        description="Read a Flax .npz checkpoint, a vit-keras .weights.h5 / .h5 or the original recipe's\n"
                    "Keras-2 .h5 (every dimension is read from the file) and write a vitkit .weights.h5\n"
                    "that `vitkit.load_model` rebuilds alone. Such files do not record class names:\n"
                    "give them in the model's output order.\n\n"
                    "examples:\n"
                    "  vitkit weights convert old/model.h5 --classes bottle,can,mug --preprocess tf \\\n"
                    "        --out models/old.weights.h5\n"
                    "  vitkit weights convert ViT-B_16_imagenet21k+imagenet2012.npz \\\n"
                    "        --classes imagenet2012.txt --out models/imagenet.weights.h5",
    )
    convert.add_argument("source", type=Path, metavar="FILE", help="the weights file to convert")
    convert.add_argument("--classes", required=True, metavar="A,B,C|FILE",
                         help="class names in output order: a,b,c, a text file (one per line) or a manifest CSV")
    convert.add_argument("--out", type=Path, required=True, metavar="MODEL.weights.h5", help="vitkit model file to write")
    convert.add_argument("--no-top", dest="include_top", action="store_false", default=None,
                         help="keep only the backbone and put a new, untrained head for --classes on it")
    convert.add_argument("--image-size", type=_image_size, metavar="SIZE",
                         help="input size (default: the file's; another size resamples the position embedding)")
    _add_overwrite(convert)
    _add_foreign_model_options(convert)


def _run_weights_list(args: argparse.Namespace) -> None:
    from vitkit.weights import CHECKPOINTS, cached_checkpoint, weights_dirs

    folders = weights_dirs()
    print("cache folders (downloads go to the first; set VITKIT_HOME to move it):")
    for folder in folders:
        print(f"  {folder}{'' if folder.is_dir() else '  (not created yet)'}")
    width = max(len(name) for name in CHECKPOINTS)
    print(f"\n{'checkpoint':<{width}}  {'backbone':<8}  present")
    for name, checkpoint in CHECKPOINTS.items():
        found = cached_checkpoint(checkpoint)
        print(f"{name:<{width}}  {checkpoint.backbone:<8}  {found if found else '-'}")


def _run_weights_download(args: argparse.Namespace) -> None:
    from vitkit.weights import cached_checkpoint, checkpoint_named, download_checkpoint, sha256_of

    checkpoint = checkpoint_named(args.name)
    found = cached_checkpoint(checkpoint)
    if found and not args.force:
        print(f"{checkpoint.file_name} is already present: {found} (use --force to download it again)")
        return
    path = download_checkpoint(checkpoint, sha256=args.sha256)
    print(f"downloaded {path} (SHA-256 {sha256_of(path)})")


def _run_weights_convert(args: argparse.Namespace) -> None:
    from vitkit.convert import convert_weights

    out = convert_weights(args.source, args.out, classes=args.classes, include_top=args.include_top,
                  image_size=args.image_size, overwrite=args.overwrite, **_foreign_options(args))
    print(f"model: {out}")


# export ----------------------------------------------------------------------------------------

def _add_export(commands) -> None:
    parser = _command(
        commands, "export", "export a model for serving outside vitkit (.keras, SavedModel, ONNX)", _run_export,
        description="Write MODEL (a vitkit .weights.h5, or any file `vitkit.load_model` reads) as a\n"
                    ".keras file, a TensorFlow SavedModel folder or an .onnx file. Every export takes\n"
                    "uint8 images (batch, height, width, 3) and returns class probabilities in the\n"
                    "model's class order. SavedModel needs the tensorflow or jax backend, ONNX the\n"
                    "tensorflow backend and the tf2onnx package.\n\n"
                    "examples:\n"
                    "  vitkit export models/products.weights.h5 --format savedmodel --out serve/products\n"
                    "  vitkit export models/products.weights.h5 --format onnx --out products.onnx",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="model file")
    parser.add_argument("--format", choices=("keras", "savedmodel", "onnx"), required=True,
                        help="keras (.keras file), savedmodel (TensorFlow SavedModel folder) or onnx")
    parser.add_argument("--out", type=Path, required=True, metavar="PATH",
                        help="a .keras / .onnx file, or a folder for savedmodel")
    parser.add_argument("--classes", metavar="A,B,C|FILE", help="class names, for a file of another tool")
    _add_overwrite(parser)
    _add_foreign_model_options(parser)


def _run_export(args: argparse.Namespace) -> None:
    from vitkit.export import export_model
    from vitkit.modelfile import load_model

    model = load_model(args.model, classes=args.classes, **_foreign_options(args))
    out = export_model(model, args.out, args.format, overwrite=args.overwrite)
    print(f"{args.format}: {out}")
# explain ---------------------------------------------------------------------------------------

def _add_explain(commands) -> None:
    parser = _command(
        commands, "explain", "draw where the model looks: attention maps beside the photos, and a report",
        _run_explain,
        description="For every image, OUT/figures/ gets the original, the attention map over it and the image\n"
                    "masked by the map, titled with the file, the predicted class and confidence (and the\n"
                    "true class: green when right, red when wrong). OUT also gets grid.png (the first 16\n"
                    "maps), layers.png and heads.png (every layer's and head's map for the --focus image)\n"
                    "and explanations.csv. Maps are computed in the prediction's own forward pass.\n\n"
                    "methods:\n"
                    "  rollout   attention rollout through all layers (Abnar & Zuidema 2020); the same for every class\n"
                    "  gradient  class-specific relevance (Chefer et al. 2021) of the predicted class, or of --class\n"
                    "  layer     the class token's attention in one layer (--layer; 0 = first, -1 = last)\n\n"
                    "examples:\n"
                    "  vitkit explain models/products.weights.h5 data_manifests/products/test.csv --out explained/ \\\n"
                    "        --report explained/report.html --pdf explained/maps.pdf\n"
                    "  vitkit explain models/products.weights.h5 photos/mug/ --out mugs/ --method gradient --class mug\n"
                    "  vitkit explain models/products.weights.h5 a.jpg --out a/ --discard-ratio 0.9 --head-fusion max \\\n"
                    "        --save-maps a/maps.npz --export-attention a/attention.json",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="a .weights.h5 model file (or a file of another tool)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="a manifest, a folder, or image files")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the figures and the table")
    maps = parser.add_argument_group("maps")
    maps.add_argument("--method", choices=("rollout", "gradient", "layer"), default="rollout",
                      help="how maps are made (default rollout)")
    maps.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean",
                      help="how the heads of a layer are combined, for rollout and layer (default mean)")
    maps.add_argument("--discard-ratio", type=float, default=0.0, metavar="FRACTION",
                      help="rollout: share of the weakest attention weights dropped per layer, e.g. 0.9 (default 0)")
    maps.add_argument("--layer", type=int, default=0, help="layer of --method layer (default 0, the first; -1 = last)")
    maps.add_argument("--class", dest="class_name", metavar="NAME",
                      help="gradient: explain this class instead of the predicted one")
    files = parser.add_argument_group("more outputs")
    files.add_argument("--report", type=Path, metavar="HTML",
                       help="one self-contained HTML page: model, metrics, every image with its map, sortable and filterable")
    files.add_argument("--pdf", type=Path, metavar="PDF", help="every image's figure as the pages of one PDF")
    files.add_argument("--save-maps", type=Path, metavar="NPZ",
                       help="the raw maps (at the model's input size, values 0-1), one array per image keyed by file")
    files.add_argument("--export-attention", type=Path, metavar="JSON",
                       help="every layer's and head's attention of the --focus image, in BertViz's head_view/model_view layout")
    files.add_argument("--focus", metavar="IMAGE",
                       help="image for layers.png, heads.png and --export-attention: a file name or a position (default 0, the first)")
    _add_model_use_options(parser, batch_size=16)


def _run_explain(args: argparse.Namespace) -> None:
    from vitkit.explanation import explain

    result = explain(
        args.model, _inputs(args.inputs), method=args.method, head_fusion=args.head_fusion,
        discard_ratio=args.discard_ratio, layer=args.layer, class_name=args.class_name, out=args.out,
        pdf=args.pdf, report=args.report, save_maps=args.save_maps, export_attention=args.export_attention,
        focus=args.focus, batch_size=args.batch_size, overwrite=args.overwrite, **_foreign_options(args),
        **_load_options(args),
    )
    if not len(result):
        print("no images to explain")
        return
    summary = f"{len(result)} images explained ({args.method})"
    if result.correct is not None:
        summary += f": {int(result.correct.sum())} of {len(result)} predicted right"
    print(summary)
    print(f"figures: {args.out}")
    for label, path in (("report", args.report), ("pdf", args.pdf), ("maps", args.save_maps),
                        ("attention", args.export_attention)):
        if path is not None:
            print(f"{label + ':':<10} {path}")


if __name__ == "__main__":
    sys.exit(main())
