"""Commands that use a trained model: ``evaluate`` and ``predict``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitkit.cli.options import (add_model_use_options, add_prediction_precision, command, foreign_options, load_options,
                                parse_inputs)
from vitkit.fileio import unused_path


# Printed predictions list their unreadable images beside this name, in the working folder.
DEFAULT_PREDICTIONS = Path("predictions.csv")


# evaluate / predict ----------------------------------------------------------------------------

MODEL_HELP = "a .weights.h5 model file (or a file of another tool)"


def _add_model_and_images(parser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="a manifest, a folder, or image files")


def add_evaluate(commands) -> None:
    parser = command(
        commands, "evaluate", "measure a model on labelled images and write a report folder", _run_evaluate,
        description="Writes metrics.json (accuracy, loss, top-k, per-class precision/recall/F1), the "
                    "confusion matrix (CSV and PNG), a grid of misclassified images and per-image and "
                    "per-class probability tables. Runs on JAX unless a backend is named, as predict "
                    "does (see vitkit predict --help).\n\n"
                    "example: vitkit evaluate models/products.weights.h5 data_manifests/products/test.csv --out report/",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("data", metavar="TEST", help="labelled manifest (or pixel CSV / class-folder tree)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder")
    add_prediction_precision(parser)
    add_model_use_options(parser, batch_size=32)
    parser.set_defaults(starts_keras_itself=True, short_lived=True, prefers_jax=True)


def _kept_or_keras(args: argparse.Namespace):
    """The model file's forward pass kept by an earlier run (JAX backend), which predicts without
    Keras; otherwise the file's path, once Keras is imported to load it."""
    from vitkit.cli.startup import start_keras
    from vitkit.prediction import kept_predictor

    kept = kept_predictor(args.model, args.precision, **foreign_options(args))
    if kept is None:
        start_keras()
    return kept or args.model


def _run_evaluate(args: argparse.Namespace) -> None:
    from vitkit.evaluation import evaluate

    metrics = evaluate(_kept_or_keras(args), args.data, out=args.out, batch_size=args.batch_size,
                       overwrite=args.overwrite, precision=args.precision, **foreign_options(args), **load_options(args))
    print(f"{metrics['images']} images: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
          f"macro F1 {metrics['macro_f1']:.4f}")
    for name, values in metrics["per_class"].items():
        print(f"  {name}: precision {values['precision']:.3f} recall {values['recall']:.3f} "
              f"F1 {values['f1']:.3f} ({values['support']} images)")
    if metrics["skipped"]:
        print(f"skipped images: {args.out / 'skipped.csv'}")
    print(f"report: {args.out}")


def add_predict(commands) -> None:
    parser = command(
        commands, "predict", "predict the class of images", _run_predict,
        description="One row per image: the file, the predicted class, its confidence and every "
                    "class's probability (and the true class when the input has labels).\n\n"
                    "Runs on JAX unless a backend is named (vitkit --backend tensorflow predict ..., or "
                    "$KERAS_BACKEND): on a CPU it "
                    "predicts about 1.5x as fast as TensorFlow, with the same probabilities within 1e-6. "
                    "On JAX the first run from a model file keeps its compiled forward pass "
                    "in the compilation cache folder (~/.keras/vitkit/compile-cache, or "
                    "$VITKIT_COMPILE_CACHE; off turns it off), and later runs, of predict and evaluate, "
                    "start without loading Keras.\n\n"
                    "examples:\n"
                    "  vitkit predict models/products.weights.h5 new_photos/ --out predictions.csv\n"
                    "  vitkit predict models/products.weights.h5 a.jpg b.jpg --grid grid.png",
    )
    _add_model_and_images(parser)
    parser.add_argument("--out", type=Path, metavar="CSV",
                        help="write the table here (default: print it, and list unreadable images in "
                             "predictions.skipped.csv, or predictions.skipped-2.csv if that exists)")
    parser.add_argument("--grid", type=Path, metavar="PNG", help="also draw 16 of the images, spread over the set, titled with predictions")
    add_prediction_precision(parser)
    add_model_use_options(parser, batch_size=32)
    parser.set_defaults(starts_keras_itself=True, short_lived=True, prefers_jax=True)


def _run_predict(args: argparse.Namespace) -> None:
    from vitkit.prediction import predict, skipped_path

    # A printed table leaves no file to sit beside, so a run never stops over an earlier list.
    skipped = skipped_path(args.out) if args.out else unused_path(skipped_path(DEFAULT_PREDICTIONS))
    table = predict(_kept_or_keras(args), parse_inputs(args.inputs), out=args.out, grid=args.grid, skipped=skipped,
                    batch_size=args.batch_size, overwrite=args.overwrite, precision=args.precision,
                    **foreign_options(args), **load_options(args))
    shown = [c for c in ("image", "predicted", "confidence", "true") if c in table]
    if args.out is None:
        print(table[shown].to_string(index=False))
        if skipped.is_file():  # stdout holds the table; the list's place goes beside the warnings
            print(f"skipped images: {skipped}", file=sys.stderr)
    else:
        print(f"{len(table)} predictions: {args.out}")
        if skipped.is_file():
            print(f"skipped images: {skipped}")
    if args.grid is not None:
        print(f"grid: {args.grid}")


# explain ---------------------------------------------------------------------------------------

def add_explain(commands) -> None:
    parser = command(
        commands, "explain", "draw where the model looks: attention maps beside the photos, and a report",
        _run_explain,
        description="For every image, OUT/figures/ gets the original, the attention map over it and the image\n"
                    "masked by the map, titled with the file, the predicted class and confidence (and the\n"
                    "true class: green when right, red when wrong). OUT also gets grid.png (16 maps spread\n"
                    "over the set), layers.png and heads.png (every layer's and head's map for the --focus image)\n"
                    "and explanations.csv. Maps are computed in the prediction's own compiled step.\n\n"
                    "methods:\n"
                    "  integrated  integrated gradients (Sundararajan et al. 2017) of the predicted class, or of\n"
                    "              --class: 8 passes from the photo's mean colour to the photo, positive part per\n"
                    "              pixel blurred by half a patch (the default: its maps point at the product most\n"
                    "              often; bench/README.md)\n"
                    "  rollout     attention rollout through all layers (Abnar & Zuidema 2020); the same for every\n"
                    "              class, one pass\n"
                    "  gradient    class-specific relevance (Chefer et al. 2021) of the predicted class, or of --class\n"
                    "  layer       the class token's attention in one layer (--layer; 0 = first, -1 = last)\n\n"
                    "examples:\n"
                    "  vitkit explain models/products.weights.h5 data_manifests/products/test.csv --out explained/ \\\n"
                    "        --report explained/report.html --pdf explained/maps.pdf\n"
                    "  vitkit explain models/products.weights.h5 photos/mug/ --out mugs/ --class mug\n"
                    "  vitkit explain models/products.weights.h5 a.jpg --out a/ --method rollout --discard-ratio 0.9 \\\n"
                    "        --head-fusion max --save-maps a/maps.npz --export-attention a/attention.json",
    )
    _add_model_and_images(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the figures and the table")
    maps = parser.add_argument_group("maps")
    maps.add_argument("--method", choices=("integrated", "rollout", "gradient", "layer"), default="integrated",
                      help="how maps are made (default integrated)")
    maps.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean",
                      help="how the heads of a layer are combined, for rollout and layer (default mean)")
    maps.add_argument("--discard-ratio", type=float, default=0.0, metavar="FRACTION",
                      help="rollout: share of the weakest attention weights dropped per layer, e.g. 0.9 (default 0)")
    maps.add_argument("--layer", type=int, default=0, help="layer of --method layer (default 0, the first; -1 = last)")
    maps.add_argument("--class", dest="class_name", metavar="NAME",
                      help="integrated, gradient: explain this class instead of the predicted one")
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
    add_model_use_options(parser, batch_size=16)
    parser.set_defaults(short_lived=True)


def _run_explain(args: argparse.Namespace) -> None:
    from vitkit.explanation.explain import explain

    result = explain(
        args.model, parse_inputs(args.inputs), method=args.method, head_fusion=args.head_fusion,
        discard_ratio=args.discard_ratio, layer=args.layer, class_name=args.class_name, out=args.out,
        pdf=args.pdf, report=args.report, save_maps=args.save_maps, export_attention=args.export_attention,
        focus=args.focus, batch_size=args.batch_size, overwrite=args.overwrite, **foreign_options(args),
        **load_options(args),
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

