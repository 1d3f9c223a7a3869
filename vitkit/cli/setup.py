"""Commands that set up a project: ``demo`` and ``manifest``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitkit.cli.options import add_overwrite, command, parse_image_size, parse_name_list


# demo ------------------------------------------------------------------------------------------

def add_demo(commands) -> None:
    parser = command(
        commands, "demo", "train, evaluate and explain a small ViT on the bundled sample photos", _run_demo,
        description="Run the whole path on the sample product photos in examples/photos: build "
                    "manifests, train a small ViT from scratch (no download), save and reload the "
                    ".weights.h5 file, evaluate, predict and draw figures. Takes a few minutes on a CPU.",
    )
    parser.add_argument("--out", type=Path, default=Path("vitkit_demo"), help="output folder (default: vitkit_demo)")
    parser.add_argument("--photos", type=Path, help="photo folder, one sub-folder per class (default: the bundled samples)")
    parser.add_argument("--backbone", default=None, help="backbone preset (default: the small from-scratch one)")
    parser.add_argument("--weights", default="none", help="none, imagenet21k, imagenet21k+imagenet2012 or a .npz path")
    parser.add_argument("--image-size", type=parse_image_size, default=None, help="input size (default: 48, or 224 with pretrained weights)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    add_overwrite(parser)


def _run_demo(args: argparse.Namespace) -> None:
    from vitkit.demo import run_demo

    run_demo(out=args.out, photos=args.photos, backbone=args.backbone, weights=args.weights,
             image_size=args.image_size, epochs=args.epochs, seed=args.seed, overwrite=args.overwrite)


# manifest --------------------------------------------------------------------------------------

def add_manifest(commands) -> None:
    parser = commands.add_parser(
        "manifest", help="build and check image manifests (CSV lists of photos)",
        description="Manifests are CSV files with the columns base_path,type_dir,file_name "
                    "(image = base_path/type_dir/file_name) and optional label and split columns.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    build = command(
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
    add_overwrite(build)

    check = command(
        actions, "check", "list every problem of a manifest by row (missing files, unreadable images, classes)",
        _run_manifest_check,
    )
    check.add_argument("manifest", type=Path, metavar="MANIFEST")
    check.add_argument("--label-from", choices=("auto", "label", "type_dir", "substring"), default="auto")
    check.add_argument("--classes", type=parse_name_list, metavar="A,B,C")
    check.add_argument("--root", type=Path, metavar="DIR")
    check.add_argument("--encoding", help="text encoding (default: UTF-8, then Shift-JIS)")


def _run_manifest_build(args: argparse.Namespace) -> None:
    from vitkit.data.manifestbuild import SPLITS, build_manifests

    summary = build_manifests(args.photo_dir, args.out, args.val, args.test, args.seed, args.overwrite)
    classes = sorted(set().union(*summary.values()))
    width = max(len(name) for name in classes + ["class"])
    print(f"{'class':<{width}}  {'train':>6} {'val':>6} {'test':>6}")
    for name in classes:
        print(f"{name:<{width}}  " + " ".join(f"{summary[split][name]:>6}" for split in SPLITS))
    print(f"{'total':<{width}}  " + " ".join(f"{sum(summary[split].values()):>6}" for split in SPLITS))
    print(f"wrote {', '.join(str(args.out / f'{split}.csv') for split in SPLITS)}")


def _run_manifest_check(args: argparse.Namespace) -> int:
    from vitkit.data.manifest import check_manifest

    problems = check_manifest(args.manifest, args.label_from, args.classes, args.root, args.encoding)
    for problem in problems:
        where = f"line {problem.line}" if problem.line else "file"
        print(f"{args.manifest} {where}: {problem.message}")
    print(f"{args.manifest}: {len(problems)} problem(s)" if problems else f"{args.manifest}: no problems found")
    return 1 if problems else 0
