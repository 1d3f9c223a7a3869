"""What writing an epoch's files costs the epoch: written synchronously, in the background, or not at all.

    python bench/checkpoint_stall.py [--layers 8] [--hidden 512] [--steps 4] [--epochs 5] [--repeats 5]

A ViT of ``--layers`` x ``--hidden`` (patch 8 on 32 px images, so the epochs stay short and the
weights are what is large) trains ``--steps`` batches an epoch, through Keras ``fit`` with
vitkit's :class:`~vitkit.training.runstate.RunKeeper` writing what ``vitkit train`` writes after
an epoch (the resume state: weights, optimizer moments and random states; the history; the best
model), forced to find every epoch the best so far (early epochs improve nearly every time). The
arms:

- ``none``: nothing written;
- ``sync``: the files written in the training thread (``CheckpointWriter(background=False)``);
- ``background``: the variables copied on their device in the training thread, the files written
  in a background thread while the next epoch runs (what ``vitkit train`` does).

One process; the arms alternate, one ``fit`` of ``--epochs`` epochs each per repeat, after a
warm-up fit. An epoch's time runs from its start to the next epoch's start, so it holds its
checkpoint (written or handed over) and whatever the write before it takes from it (the first
epoch of a fit, which follows no write, is left out); each arm reports the median over its
epochs and repeats (a shared CPU changes speed from minute to minute). The wait for the last
background write at the end of a run is reported apart: it is paid once a run. Also shown: the
time the training thread spends taking the copies, and what writing the files alone takes. Prints a table and writes bench/results/checkpoint_stall.json.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from common import save_results, table  # noqa: E402
from vitkit.models.classifier import build_model  # noqa: E402
from vitkit.models.modelfile import snapshot_model, write_snapshot  # noqa: E402
from vitkit.training.checkpoints import CheckpointWriter  # noqa: E402
from vitkit.training.runstate import RunKeeper  # noqa: E402

ARMS = ("none", "sync", "background")


class EpochClock(keras.callbacks.Callback):
    """When each epoch starts, and when training ends (before a keeper's final wait)."""

    def __init__(self):
        super().__init__()
        self.starts: list[float] = []
        self.ended = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.starts.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.ended = time.perf_counter()


class EveryEpoch(RunKeeper):
    """A keeper whose every epoch improves, so that every epoch writes a checkpoint."""

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.best = math.inf


def keeper_for(arm: str, folder: Path) -> RunKeeper | None:
    """The callback of an arm: none, or a keeper that writes the best checkpoint every epoch."""
    if arm == "none":
        return None
    return EveryEpoch(folder / f"{arm}.weights.h5", folder / f"{arm}.run", folder / f"{arm}.history.csv", "loss",
                      {}, [], checkpoints=CheckpointWriter(background=arm == "background"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="batches per epoch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timed fit (at least 3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed fits per arm, the arms alternating")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = build_model(["a", "b", "c"], backbone="vit_micro", image_size=32, augment=False, patch_size=8,
                        num_layers=args.layers, hidden_size=args.hidden, num_heads=max(args.hidden // 64, 1),
                        mlp_dim=4 * args.hidden)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (args.steps * args.batch, 32, 32, 3), dtype=np.uint8)
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, len(x))]

    with tempfile.TemporaryDirectory(prefix="checkpoint-stall-") as folder:
        folder = Path(folder)
        model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)  # tracing, not timed
        alone = keeper_for("sync", folder)
        alone.set_model(model)
        copies, writes = [], []
        for _ in range(4):  # the first also walks the model
            started = time.perf_counter()
            snapshot, variables = snapshot_model(model), alone._variables()
            copies.append(time.perf_counter() - started)
            started = time.perf_counter()
            alone._save_state(1, snapshot, variables, alone._state(1), False)
            write_snapshot(snapshot, folder / "alone.weights.h5", overwrite=True)
            writes.append(time.perf_counter() - started)
        copy_seconds, write_seconds = statistics.median(copies[1:]), statistics.median(writes[1:])
        megabytes = sum(f.stat().st_size for f in [folder / "alone.weights.h5", *(folder / "sync.run").iterdir()]) / 1e6

        epochs = {arm: [] for arm in ARMS}
        final_waits = {arm: [] for arm in ARMS}
        for _ in range(args.repeats):
            for arm in ARMS:
                keeper, clock = keeper_for(arm, folder), EpochClock()
                model.fit(x, y, batch_size=args.batch, epochs=args.epochs, verbose=0,
                          callbacks=[clock] + ([keeper] if keeper else []))
                final_waits[arm].append(time.perf_counter() - clock.ended)
                epochs[arm] += list(np.diff(clock.starts))[1:]

    per_epoch = {arm: statistics.median(epochs[arm]) for arm in ARMS}
    rows = [{"arm": arm, "s/epoch": per_epoch[arm], "vs none": f"{per_epoch[arm] / per_epoch['none']:.3f}x",
             "stall/checkpoint s": per_epoch[arm] - per_epoch["none"],
             "wait at end s": statistics.median(final_waits[arm])} for arm in ARMS]
    print(f"model: {sum(int(np.prod(w.shape)) for w in model.weights) / 1e6:.1f}M weights, an epoch's files "
          f"{megabytes:.1f} MB; copies taken in {copy_seconds:.3f} s, the files written alone in {write_seconds:.3f} s "
          f"(medians); "
          f"{args.steps} steps of {args.batch} an epoch")
    print(table(rows, ["arm", "s/epoch", "vs none", "stall/checkpoint s", "wait at end s"]))
    stall = per_epoch["sync"] - per_epoch["none"]
    if stall > 0:
        print(f"the background write hides {(per_epoch['sync'] - per_epoch['background']) / stall:.0%} "
              f"of the synchronous stall")
    save_results("checkpoint_stall", {"args": vars(args), "files_mb": megabytes, "copy_s": copy_seconds,
                                      "write_s": write_seconds, "seconds_per_epoch": per_epoch,
                                      "epochs": epochs, "final_waits": final_waits})


if __name__ == "__main__":
    main()
