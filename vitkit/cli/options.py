"""Option groups and value parsers shared by the subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Sequence

def command(commands, name: str, help: str, run: Callable[[argparse.Namespace], int | None],
             description: str | None = None) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=help, description=description or help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


# Shared option groups ------------------------------------------------------------------------

def add_data_options(parser: argparse.ArgumentParser, classes: bool = True) -> None:
    """The "reading images" options; ``classes``: also how rows get their class (not for pretrain)."""
    group = parser.add_argument_group("reading images")
    if classes:
        group.add_argument(
            "--label-from", choices=("auto", "label", "type_dir", "substring"), default="auto",
            help="class of a manifest row: auto = the label column if present, else type_dir; "
                 "substring = the --classes name contained in type_dir (the old notebooks' rule)",
        )
        group.add_argument("--classes", type=parse_name_list, metavar="A,B,C",
                           help="class names in output order (default: sorted names found)")
    group.add_argument("--root", type=Path, metavar="DIR",
                       help="folder that relative base_path values start from (default: the manifest's folder)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="decoded-image cache (default: $VITKIT_CACHE_DIR or ~/.keras/vitkit/cache)")
    group.add_argument("--on-bad-image", choices=("skip", "error"), default="skip",
                       help="skip unreadable images with a warning and list them beside the outputs "
                            "(default), or stop at the first one")


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "label_from": args.label_from, "classes": args.classes, "root": args.root,
        "cache_dir": args.cache_dir, "on_bad_image": args.on_bad_image,
    }


def add_foreign_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model files of other tools",
        "Flax .npz checkpoints, vit-keras .h5 / .weights.h5, the original recipe's Keras-2 .h5 and\n"
        "timm checkpoints (.safetensors, a folder with config.json, hf-hub:ORG/NAME) load directly;\n"
        "they do not record class names (give --classes in output order) nor, for H5 files, how\n"
        "pixels were scaled (give --preprocess)",
    )
    group.add_argument("--preprocess", choices=("tf", "raw"),
                       help="tf: pixels scaled to [-1, 1] (as in training); raw: 0-255 as the original "
                            "notebook fed them at prediction time")
    group.add_argument("--heads", dest="num_heads", type=int, metavar="N",
                       help="attention heads, for H5 files whose width is not a published ViT's")


def foreign_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"preprocess": args.preprocess, "num_heads": args.num_heads}


def add_model_use_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """Options every command that runs a model on images shares: batch, overwrite, reading images,
    and model files of other tools."""
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"images per step (default {batch_size})")
    add_overwrite(parser)
    add_data_options(parser)
    add_foreign_model_options(parser)


def add_prediction_precision(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"), default="float32",
        help="float32 (default): exact probabilities. mixed_bfloat16: matrix products in bfloat16, "
             "for GPUs and for CPUs with AVX-512 BF16 or AMX (ViT-B/16 on 2 such cores, TensorFlow: "
             "2.9x the original recipe's speed, against 1.1x in float32); slower on CPUs without "
             "them. Probabilities move by up to about 0.04 and a top-1 class can change "
             "where two classes are that close: 0 of 180 sample photos, 3 of 180 photos of a "
             "cluttered set (bench/cpu_predict.py)",
    )


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def parse_name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give class names separated by commas, e.g. good,scratch,dent")
    return names


def parse_image_size(text: str) -> int | tuple[int, int]:
    try:
        parts = [int(part) for part in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        return parts[0]
    if len(parts) == 2 and min(parts) > 0:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"image size is a positive integer or HEIGHTxWIDTH, got {text!r}")


def parse_inputs(values: Sequence[str]) -> Any:
    """One manifest, pixel CSV or folder as given; several files as a list."""
    return values[0] if len(values) == 1 else [Path(value) for value in values]


def device_count(text: str) -> int | str:
    """``--devices``: ``all`` or a number of devices."""
    from vitkit.errors import ConfigError
    from vitkit.training.parallel import parse_devices

    try:
        return parse_devices(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
