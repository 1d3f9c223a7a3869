"""Commands on weights files: ``weights`` (list, download, convert) and ``export``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitkit.cli.options import add_foreign_model_options, add_overwrite, command, foreign_options, parse_image_size


# weights ---------------------------------------------------------------------------------------

def add_weights(commands) -> None:
    parser = commands.add_parser(
        "weights", help="list, download and convert pretrained and old weights files",
        description="Pretrained checkpoints: the 2020 and AugReg Flax .npz files, cached in\n"
                    "$VITKIT_HOME/weights (default ~/.keras/vitkit/weights; vit-keras' cache\n"
                    "~/.keras/weights is searched too), and timm checkpoints on the Hugging Face Hub\n"
                    "(hf-hub:ORG/NAME), cached where huggingface_hub keeps them (HF_HOME).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)
    command(actions, "list", "show the checkpoint families, the cache folders and which checkpoints are present",
             _run_weights_list)

    download = command(
        actions, "download", "download a checkpoint into the cache (progress bar, SHA-256, atomic write)",
        _run_weights_download,
        description="Download one of the checkpoints `vitkit weights list` shows. A .npz file is written\n"
                    "under a temporary name and moved into place only when complete; its SHA-256 is\n"
                    "recorded beside it and checked on later use. hf-hub:ORG/NAME fetches config.json and\n"
                    "model.safetensors into the Hugging Face cache (huggingface_hub checks them itself).\n\n"
                    "examples:\n"
                    "  vitkit weights download ViT-B_16_imagenet21k\n"
                    "  vitkit weights download vit_base_patch16_224.augreg_in21k\n"
                    "  vitkit weights download hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m",
    )
    download.add_argument("name", metavar="NAME",
                          help="ViT-B_16_imagenet21k (.npz optional), an AugReg name, or hf-hub:ORG/NAME")
    download.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of a .npz; a download that differs is discarded")
    download.add_argument("--force", action="store_true", help="download even if the checkpoint is already cached")

    convert = command(
        actions, "convert", "turn a weights file of another tool into a vitkit model file",
        _run_weights_convert,
        description="Read a Flax .npz checkpoint, a vit-keras .weights.h5 / .h5, the original recipe's\n"
                    "Keras-2 .h5 or a timm checkpoint (.safetensors, a folder, hf-hub:ORG/NAME) (every\n"
                    "dimension is read from the file) and write a vitkit .weights.h5 that\n"
                    "`vitkit.load_model` rebuilds alone. Such files do not record class names: give\n"
                    "them in the model's output order.\n\n"
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
    convert.add_argument("--image-size", type=parse_image_size, metavar="SIZE",
                         help="input size (default: the file's; another size resamples the position embedding)")
    convert.add_argument("--architecture", metavar="TIMM_NAME", help="timm architecture of a .safetensors without config.json")
    add_overwrite(convert)
    add_foreign_model_options(convert)


def _run_weights_list(args: argparse.Namespace) -> None:
    from huggingface_hub import constants

    from vitkit.models.augreg import AUGREG
    from vitkit.models.hub import RECOMMENDED, cached_hub_file
    from vitkit.models.timmconfig import ARCHITECTURES
    from vitkit.models.weights import CHECKPOINTS, cached_checkpoint, weights_dirs

    folders = weights_dirs()
    print("cache folders of .npz checkpoints (downloads go to the first; set VITKIT_HOME to move it):")
    for folder in folders:
        print(f"  {folder}{'' if folder.is_dir() else '  (not created yet)'}")
    print("\n2020 ViT (Flax .npz): --backbone vit_b16|vit_b32|vit_l16|vit_l32 --weights imagenet21k|imagenet21k+imagenet2012")
    _table(("checkpoint", "backbone", "present"),
           [(name, checkpoint.backbone, cached_checkpoint(checkpoint)) for name, checkpoint in CHECKPOINTS.items()])
    print("\nAugReg, How to train your ViT (Flax .npz): --weights NAME")
    _table(("checkpoint", "present"), [(name, cached_checkpoint(checkpoint)) for name, checkpoint in AUGREG.items()])
    print(f"\ntimm on the Hugging Face Hub (safetensors): --weights hf-hub:ORG/NAME; cache {constants.HF_HUB_CACHE} "
          f"(set HF_HOME to move it), HF_HUB_OFFLINE=1 for the cache only")
    _table(("checkpoint", "present"), [(f"hf-hub:{repo}", cached_hub_file(repo)) for repo in RECOMMENDED])
    print("\ntimm architectures vitkit builds (any hf-hub:timm/ARCHITECTURE.TAG, or a .safetensors of them):")
    for family in dict.fromkeys(a.family for a in ARCHITECTURES.values()):
        print(f"  {family}: " + ", ".join(n for n, a in ARCHITECTURES.items() if a.family == family))


def _table(header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(row[i] or "-")) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(f"{str(cell):<{width}}" for cell, width in zip(row, widths)) + f"  {row[-1] or '-'}")


def _run_weights_download(args: argparse.Namespace) -> None:
    from vitkit.models.augreg import augreg_named
    from vitkit.models.weights import cached_checkpoint, checkpoint_named, download_checkpoint, sha256_of

    if args.name.startswith("hf-hub:"):
        _download_hub(args)
        return
    checkpoint = augreg_named(args.name) or checkpoint_named(args.name)
    found = cached_checkpoint(checkpoint)
    if found and not args.force:
        print(f"{checkpoint.file_name} is already present: {found} (use --force to download it again)")
        return
    path = download_checkpoint(checkpoint, sha256=args.sha256)
    print(f"downloaded {path} (SHA-256 {sha256_of(path)})")


def _download_hub(args: argparse.Namespace) -> None:
    from vitkit.errors import ConfigError
    from vitkit.models.hub import hub_files

    if args.sha256:
        raise ConfigError("--sha256 applies to .npz checkpoints; huggingface_hub checks the files of the Hub itself")
    config, weights = hub_files(args.name.removeprefix("hf-hub:"), force=args.force)
    print(f"{args.name}: {weights}" + (f" and {config.name}" if config else " (no config.json)"))


def _run_weights_convert(args: argparse.Namespace) -> None:
    from vitkit.models.modelfile import convert_weights

    out = convert_weights(args.source, args.out, classes=args.classes, include_top=args.include_top,
                          image_size=args.image_size, overwrite=args.overwrite, architecture=args.architecture,
                          **foreign_options(args))
    print(f"model: {out}")


# export ----------------------------------------------------------------------------------------

def add_export(commands) -> None:
    parser = command(
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
    add_overwrite(parser)
    add_foreign_model_options(parser)


def _run_export(args: argparse.Namespace) -> None:
    from vitkit.models.export import export_model
    from vitkit.models.modelfile import load_model

    model = load_model(args.model, classes=args.classes, **foreign_options(args))
    out = export_model(model, args.out, args.format, overwrite=args.overwrite)
    print(f"{args.format}: {out}")
