"""scikit-learn's digits through the command line: plain recipe vs small-data recipe, same budget.

    python bench/digits.py [--epochs 80] [--arms small-data,plain,distilled,pretrained]

The 1,797 8x8 digits are written as pixel CSVs (``label,pixel0..pixel63``, 80/20 stratified
split, seed 0) and each arm runs ``python -m vitkit train`` then ``python -m vitkit evaluate``
on the held-out 20%:

- ``small-data``: ``--weights none`` and nothing else, so the recipe is picked by default;
- ``plain``: ``--recipe plain`` given the small-data recipe's backbone, input size and batch
  size, the same epochs, and no early stopping, so only the recipe differs;
- ``plain, same time``: the plain arm again with as many epochs as fit in the wall time the
  small-data arm took (its steps are cheaper);
- ``distilled``: ``--weights none --teacher cnn``, the small CNN trained first;
- ``pretrained``: ``vitkit pretrain`` on the training CSV (labels unused) for
  ``--pretrain-epochs``, then ``--weights`` that backbone file; its time counts both.

Runs are sequential; wall times are approximate on a shared CPU, compare them within one run.
Writes ``bench/results/digits.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_vitkit, save_results, table, write_digits_csvs  # noqa: E402


def run_arm(name: str, train_args: list[str], train_csv: Path, test_csv: Path, work: Path,
            pretrain_epochs: int | None = None) -> dict:
    model = work / f"{name.replace(' ', '_').replace(',', '')}.weights.h5"
    pretrain_seconds = 0.0
    if pretrain_epochs:
        backbone = model.with_name(model.name.replace(".weights.h5", ".backbone.weights.h5"))
        pretrain_seconds, _ = run_vitkit("pretrain", str(train_csv), "--out", str(backbone), "--overwrite",
                                         "--epochs", str(pretrain_epochs), log=model.with_suffix(".pretrain.log"))
        train_args = [*train_args, "--weights", str(backbone), "--recipe", "small-data"]
    train_seconds, output = run_vitkit("train", str(train_csv), "--out", str(model), "--overwrite", *train_args,
                                       log=model.with_suffix(".train.log"))
    report = model.with_name(model.name.replace(".weights.h5", "_report"))
    eval_seconds, _ = run_vitkit("evaluate", str(model), str(test_csv), "--out", str(report), "--overwrite")
    metrics = json.loads((report / "metrics.json").read_text())
    history = (model.with_name(model.name.replace(".weights.h5", ".history.csv"))).read_text().splitlines()
    recipe = next(line.split()[-1] for line in output.splitlines() if line.startswith("recipe:"))
    return {"arm": name, "recipe": recipe, "test_accuracy": metrics["accuracy"],
            "test_error": 1.0 - metrics["accuracy"], "epochs": len(history) - 1,
            "train_seconds": round(pretrain_seconds + train_seconds, 1), "evaluate_seconds": round(eval_seconds, 1),
            "command": "vitkit train TRAIN.csv " + " ".join(train_args)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every arm (default: the small-data recipe's)")
    parser.add_argument("--no-same-time", action="store_true", help="skip the plain arm with the small-data arm's wall time")
    parser.add_argument("--arms", default="small-data,plain",
                        help="of small-data, plain, distilled, pretrained (comma-separated)")
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    args = parser.parse_args(argv)

    from vitkit.training.recipes import SMALL_DATA

    epochs = args.epochs or SMALL_DATA.options["epochs"]
    work = Path(tempfile.mkdtemp(prefix="vitkit-digits-"))
    train_csv, test_csv = write_digits_csvs(work)
    recipe = SMALL_DATA.options
    plain = ["--recipe", "plain", "--backbone", recipe["backbone"], "--image-size", str(recipe["image_size"]),
             "--batch-size", str(recipe["batch_size"]), "--patience", "0"]
    arms = {
        "small-data": lambda: run_arm("small-data", ["--weights", "none", "--epochs", str(epochs)],
                                      train_csv, test_csv, work),
        "plain": lambda: run_arm("plain", plain + ["--epochs", str(epochs)], train_csv, test_csv, work),
        "distilled": lambda: run_arm("distilled", ["--weights", "none", "--teacher", "cnn", "--epochs", str(epochs)],
                                     train_csv, test_csv, work),
        "pretrained": lambda: run_arm("pretrained", ["--epochs", str(epochs)], train_csv, test_csv, work,
                                      pretrain_epochs=args.pretrain_epochs),
    }
    rows = [arms[name]() for name in args.arms.split(",")]
    for row in rows:
        print(table([row], ["arm", "test_accuracy", "epochs", "train_seconds"]).splitlines()[-1], flush=True)
    timed = {row["arm"]: row["train_seconds"] for row in rows}
    if not args.no_same_time and {"small-data", "plain"} <= set(timed):
        same_time = max(epochs, round(epochs * timed["small-data"] / timed["plain"]))
        rows.append(run_arm("plain, same time", plain + ["--epochs", str(same_time)], train_csv, test_csv, work))
    print()
    print(table(rows, ["arm", "recipe", "test_accuracy", "test_error", "epochs", "train_seconds", "evaluate_seconds"]))
    for row in rows:
        print(f"  {row['arm']}: {row['command']}")
    path = save_results("digits", {"data": "sklearn digits 8x8 as pixel CSV, 1437 train (10% of it for "
                                           "validation) / 360 test, stratified, seed 0",
                                   "epochs": epochs, "arms": rows})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
