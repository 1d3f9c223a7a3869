"""Ablation of the small-data recipe on scikit-learn's digits: what each technique buys on its own.

    python bench/ablation.py [--epochs 25] [--only NAME,NAME]

Every arm trains the same backbone (the small-data recipe's), at the same input size, for the
same epochs and batch size, from the same seed, and is evaluated on the same held-out 20% of
the digits. ``plain`` is the plain recipe; ``base`` adds only AdamW with warm-up and cosine
decay at the small-data learning rate; each ``base + X`` arm adds one technique to ``base``;
``small-data`` is the whole recipe (conv stem) and ``small-data - X`` removes one technique
from it; ``small-data, patch embedding`` and ``small-data, shifted patches`` swap its tokenizer,
and ``small-data, shifted patches - X`` removes one technique from the shifted-patch variant
(``+ X`` adds one it leaves out).
Arms run one after another in this process; wall times are approximate on a shared CPU, so
compare them within one run of this script. Writes ``bench/results/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, save_results, table, write_digits_csvs  # noqa: E402
from vitkit.training.recipes import SMALL_DATA  # noqa: E402

PLAIN_AUGMENT = True   # the plain recipe's: flip, rotation, zoom, translation, brightness, contrast
# Each technique as (its setting when on, its setting when off); "base" has them all off.
TECHNIQUES = {
    "shifted patches": ({"tokenizer": "shifted"}, {"tokenizer": "patch"}),
    "conv stem": ({"tokenizer": "conv"}, {"tokenizer": "patch"}),
    "locality attention": ({"locality_attention": True}, {"locality_attention": False}),
    # On: the recipe's augmentation in place of the plain one; off: the recipe's without RandAugment.
    "randaugment": ({"augment": dict(SMALL_DATA.options["augment"])},
                    {"augment": {**SMALL_DATA.options["augment"], "randaugment_ops": 0}}),
    "mixup/cutmix": ({"mixup": 0.8, "cutmix": 1.0}, {"mixup": 0.0, "cutmix": 0.0}),
    "label smoothing": ({"label_smoothing": 0.1}, {"label_smoothing": 0.0}),
    "stochastic depth": ({"drop_path": 0.1}, {"drop_path": 0.0}),
}
ALL_OFF = {key: value for _, off in TECHNIQUES.values() for key, value in off.items()}
ALL_OFF["augment"] = PLAIN_AUGMENT
# The plain recipe with the small-data optimizer and schedule, every technique off.
BASE = {"recipe": "plain", "optimizer": "adamw", "learning_rate": SMALL_DATA.options["learning_rate"],
        "schedule": "cosine", "warmup_epochs": 3, **ALL_OFF}


# Leave-one-out arms start from the recipe with shifted patches (the tokenizer it had when they
# were measured); the recipe itself and its other tokenizers are arms of their own.
SHIFTED = {"recipe": "small-data", "tokenizer": "shifted"}
LEFT_OUT = ("locality attention", "randaugment", "label smoothing", "stochastic depth")


def arms() -> dict[str, dict]:
    """Arm name -> train() options (on top of the common ones)."""
    result = {"plain": {"recipe": "plain", **ALL_OFF}, "base": dict(BASE),
              "base without flips": {**BASE, "augment": {"flip": None}}}
    result.update({f"base + {name}": {**BASE, **on} for name, (on, _) in TECHNIQUES.items()})
    result["small-data"] = {"recipe": "small-data"}
    result.update({f"small-data - {name}": {"recipe": "small-data", **TECHNIQUES[name][1]} for name in LEFT_OUT})
    result["small-data, patch embedding"] = {"recipe": "small-data", "tokenizer": "patch"}
    result["small-data, shifted patches"] = dict(SHIFTED)
    result.update({f"small-data, shifted patches - {name}": {**SHIFTED, **TECHNIQUES[name][1]} for name in LEFT_OUT})
    result["small-data, shifted patches + mixup/cutmix"] = {**SHIFTED, **TECHNIQUES["mixup/cutmix"][0]}
    result["small-data, shifted patches, at 8 px (no upsampling)"] = {**SHIFTED, "image_size": 8}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--only", help="comma-separated arm names to run; their rows replace those of "
                                       "the same names in an earlier results file")
    args = parser.parse_args(argv)

    import keras

    import vitkit

    work = Path(tempfile.mkdtemp(prefix="vitkit-ablation-"))
    train_csv, test_csv = write_digits_csvs(work / "data")
    common = {"backbone": SMALL_DATA.options["backbone"], "image_size": SMALL_DATA.options["image_size"],
              "batch_size": SMALL_DATA.options["batch_size"], "epochs": args.epochs, "patience": 0,
              "seed": 0, "verbose": 0, "overwrite": True}
    chosen = arms()
    if args.only:
        chosen = {name: chosen[name] for name in args.only.split(",")}
    rows = []
    for name, options in chosen.items():
        keras.backend.clear_session()
        started = time.monotonic()
        result = vitkit.train(str(train_csv), out=work / "model.weights.h5", **{**common, **options})
        seconds = time.monotonic() - started
        metrics = vitkit.evaluate(result.model, str(test_csv))
        rows.append({"arm": name, "test_accuracy": metrics["accuracy"], "test_error": 1 - metrics["accuracy"],
                     "best_epoch": result.best_epoch, "epochs": args.epochs, "seconds": round(seconds, 1),
                     "options": {k: v for k, v in options.items()}})
        print(table(rows[-1:], ["arm", "test_accuracy", "best_epoch", "seconds"]).splitlines()[-1], flush=True)
    previous = RESULTS / "ablation.json"
    if args.only and previous.is_file():
        fresh = {row["arm"] for row in rows}
        kept = [row for row in json.loads(previous.read_text())["arms"] if row["arm"] not in fresh]
        rows = [row for row in kept if row["arm"] in arms()] + rows
        order = list(arms())
        rows.sort(key=lambda row: order.index(row["arm"]))
    print()
    print(table(rows, ["arm", "test_accuracy", "test_error", "best_epoch", "epochs", "seconds"]))
    path = save_results("ablation", {"data": "sklearn digits, 80/20 stratified split, seed 0",
                                     "common": {k: v for k, v in common.items() if k != "overwrite"},
                                     "arms": rows})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
