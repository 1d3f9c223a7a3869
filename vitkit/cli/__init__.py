"""The ``vitkit`` command: a thin argparse layer over the Python API.

Every subcommand maps its options onto one API call; errors vitkit raises on purpose
(:class:`~vitkit.errors.VitkitError`) are printed as one line and exit with status 2.
Keras is imported only after the options are parsed, so ``--backend`` takes effect and
``vitkit --help`` is instant; ``predict`` imports it only where it builds the model.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Sequence

from vitkit.cli.pretrain import add_pretrain
from vitkit.cli.setup import add_demo, add_manifest
from vitkit.cli.startup import start_keras
from vitkit.cli.train import add_train
from vitkit.cli.use import add_evaluate, add_explain, add_predict
from vitkit.cli.weights import add_export, add_weights

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
    from vitkit.device import allocate_as_needed, configure_compilation_cache, configure_xla, jax_predicts_faster

    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    elif getattr(args, "prefers_jax", False) and jax_predicts_faster():
        os.environ["KERAS_BACKEND"] = "jax"

    configure_xla()
    configure_compilation_cache()
    if getattr(args, "short_lived", False):
        allocate_as_needed()
    warnings.showwarning = _show_warning
    from vitkit.errors import VitkitError

    try:
        if not getattr(args, "starts_keras_itself", False):
            start_keras()
        return int(args.run(args) or 0)
    except VitkitError as error:
        print(f"vitkit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        detail = f": {interrupt}" if str(interrupt) else ""
        print(f"vitkit: interrupted{detail}", file=sys.stderr)
        return 130


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
        help="Keras backend (default: $KERAS_BACKEND, else the backend in ~/.keras/keras.json, else "
             "tensorflow; predict and evaluate take jax where it is installed and no backend is named, "
             "as it predicts about 1.5x as fast on a CPU)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (add_demo, add_manifest, add_pretrain, add_train, add_evaluate, add_predict, add_weights, add_export, add_explain):
        add(commands)
    return parser
