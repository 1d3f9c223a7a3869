"""Many arms x generated sets at once: the search behind the small-data recipe's defaults.

    KERAS_BACKEND=jax python bench/photos_grid.py --seeds 0,1,2,3 --parallel 16 --arms \\
        '{"cnn40": {"kind": "cnn", "epochs": 40}, "sd60": {"weights": "none", "epochs": 60},
          "dist40": {"weights": "none", "epochs": 40, "teacher": "cnn"},
          "pre40sd40": {"kind": "pretrained", "pretrain_epochs": 40, "epochs": 40}}'

Generates the ``--difficulty`` set once per seed (``examples/make_sample_photos.py``), then runs
every (arm, set) in its own process, ``--parallel`` at a time: meant for a machine with many
cores and an accelerator, where one such small run uses a fraction of either. Arms:

- ``{"kind": "cnn", "epochs": E}``: ``bench/photos.py``'s reference CNN;
- ``{"kind": "pretrained", "pretrain_epochs": P, ...}``: ``vitkit.pretrain`` on the training
  photos, then ``vitkit.train`` from the backbone file with the other options;
- otherwise the options go to ``vitkit.train`` (``image_size`` is the set's).

With ``--attention`` every ViT run also scores ``vitkit explain``'s default map on its test photos
against the product masks (``bench/attention_quality.py``): energy inside the mask over the mask's
share, and the pointing game. Prints one JSON line per finished run and a table of test accuracy
per set with the mean (and the mean attention scores). Runs
share the machine, so their seconds are not comparable: time arms with ``bench/photos.py``.
Writes ``bench/results/photos_grid.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attention_quality  # noqa: E402
import photos  # noqa: E402
from common import save_results, table  # noqa: E402

DEFAULT_MAP = "integrated gradients (default)"


def attention_scores(model: Path, manifests: Path, photo_dir: Path) -> dict:
    """``vitkit explain``'s default map of ``model`` on the test split, scored against the masks."""
    measured = attention_quality.measure(model, str(manifests / "test.csv"), photo_dir, photos.masks_of(photo_dir),
                                         {DEFAULT_MAP: attention_quality.METHODS[DEFAULT_MAP]})
    scores = measured["methods"][DEFAULT_MAP]
    return {"energy_x": round(scores["energy_over_share"], 3), "pointing": round(scores["pointing_game"], 3),
            "pointing_tol": round(scores["pointing_game_tolerance"], 3)}


def run_one(name: str, spec: dict, photo_dir: Path, work: Path, size: int, attention: bool = False) -> dict:
    """One arm on one generated set, in this process."""
    manifests, _ = photos.prepare("set", photo_dir, work)
    kind = spec.pop("kind", "vit")
    started = time.monotonic()
    out = work / f"{name}.weights.h5"
    if kind == "cnn":
        row = photos.train_cnn(manifests, (size, size), spec.get("epochs", 40), 32)
    elif kind == "pretrained":
        pretrain = {"image_size": (size, size), "epochs": spec.pop("pretrain_epochs")}
        row = photos.train_vit(manifests, out, {**spec, "image_size": (size, size)}, pretrain)
    else:
        row = photos.train_vit(manifests, out, {**spec, "image_size": (size, size)})
    row = {**row, "arm": name, "set": photo_dir.name, "wall": round(time.monotonic() - started, 1)}
    if attention and kind != "cnn":
        row.update(attention_scores(out, manifests, photo_dir))
    return row


def mean_scores(rows: list[dict]) -> dict:
    """The mean attention scores of the runs that have them."""
    means = {}
    for key in ("energy_x", "pointing", "pointing_tol"):
        values = [row[key] for row in rows if key in row]
        if values:
            means[key] = round(sum(values) / len(values), 3)
    return means


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", required=True, help="JSON object: arm name -> options (see above)")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--difficulty", default="hard")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--attention", action="store_true",
                        help="score the default attention map of every ViT run against the product masks")
    parser.add_argument("--one", nargs=4, metavar=("NAME", "SPEC", "PHOTOS", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        name, spec, photo_dir, work = args.one
        print("RESULT " + json.dumps(run_one(name, json.loads(spec), Path(photo_dir), Path(work), args.image_size,
                                             args.attention)))
        return 0

    arms = json.loads(args.arms)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    root = Path(tempfile.mkdtemp(prefix="vitkit-grid-"))
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        sets = list(pool.map(lambda seed: photos.generate(root, f"{args.difficulty}_{seed}", args.difficulty,
                                                          args.per_class, args.image_size, seed), seeds))
    # Many processes share one accelerator: each takes memory as it needs it.
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}

    def launch(job: tuple[str, Path]) -> dict:
        name, photo_dir = job
        work = root / f"{name}-{photo_dir.name}"
        done = subprocess.run([sys.executable, __file__, "--image-size", str(args.image_size), "--arms", "{}",
                               *(["--attention"] if args.attention else []),
                               "--one", name, json.dumps(arms[name]), str(photo_dir), str(work)],
                              capture_output=True, text=True, env=env)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            return {"arm": name, "set": photo_dir.name, "error": done.stderr.strip().splitlines()[-1:]}
        return json.loads(lines[0][len("RESULT "):])

    rows = []
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        for future in concurrent.futures.as_completed([pool.submit(launch, (name, photo_dir))
                                                       for name in arms for photo_dir in sets]):
            rows.append(future.result())
            print(json.dumps(rows[-1]), flush=True)
    summary = []
    for name in arms:
        accuracy = {row["set"]: row["test_accuracy"] for row in rows if row["arm"] == name and "test_accuracy" in row}
        values = [accuracy[photo_dir.name] for photo_dir in sets if photo_dir.name in accuracy]
        summary.append({"arm": name, **{f"seed {seed}": accuracy.get(photo_dir.name) for seed, photo_dir in zip(seeds, sets)},
                        "mean": sum(values) / len(values) if values else None,
                        **mean_scores([row for row in rows if row["arm"] == name])})
    print()
    scored = ["energy_x", "pointing", "pointing_tol"] if args.attention else []
    print(table(summary, ["arm", *(f"seed {seed}" for seed in seeds), "mean", *scored]))
    print(f"results: {save_results('photos_grid', {'arms': arms, 'runs': rows, 'summary': summary})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
