"""Start-up of ``vitkit predict``: one photo and many, first and second run in new processes.

    python bench/predict_startup.py [--photos 8192] [--backbone vit_b16]

Writes a model file of ``--backbone`` (random weights, 4 classes, 224 px) and 256-px JPEGs, then
times whole ``vitkit predict`` processes: one photo with an empty compilation cache, then again
(the cache filled by the first run), in float32 and with ``--precision mixed_bfloat16``, and all
``--photos`` photos (each precision decoding them into its own empty image cache, as a first
run on new photos does). A last process runs the same steps in-process with a timer around each
(importing Keras, the backend's devices, building the model, reading its weights, the first
prediction, a second one), to show where a second run's seconds go. Prints one table and writes
bench/results/predict_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import run_vitkit, save_results, table  # noqa: E402
from gpu_train_e2e import write_photos  # noqa: E402

PHASES = r'''
import json, os, sys, time
started = last = time.perf_counter()
phases = {}
def lap(name):
    global last
    now = time.perf_counter(); phases[name] = now - last; last = now
from vitkit.device import configure_compilation_cache, configure_xla
configure_xla(); configure_compilation_cache()
import numpy as np
lap("python and vitkit.device")
from vitkit.cli import _start_keras
_start_keras()  # as the vitkit command imports Keras
import keras
lap("import keras")
if keras.backend.backend() == "jax":
    import jax
    jax.devices()
elif keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    tf.config.list_logical_devices()
lap("backend devices")
from vitkit.models.classifier import ImageClassifier
from vitkit.models.spec import ModelSpec
from vitkit.models.initialvalues import initial_values_skipped
from vitkit.models.modelfile import read_metadata
from vitkit.prediction import images_for, predict_probabilities
lap("import vitkit")
with initial_values_skipped():  # as vitkit.load_model builds it
    model = ImageClassifier(ModelSpec.from_dict(read_metadata(sys.argv[1])["spec"]))
lap("build the model")
model.load_weights(sys.argv[1])
lap("read the weights")
images = images_for(model, [sys.argv[2]])
lap("read the photo")
predict_probabilities(model, images)
lap("first prediction (compiles or reads the cache)")
predict_probabilities(model, images)
lap("second prediction")
phases["total"] = time.perf_counter() - started
print("PHASES " + json.dumps(phases))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8192)
    parser.add_argument("--backbone", default="vit_b16")
    parser.add_argument("--work", type=Path, help="keep the model and photos here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vitkit-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model.weights.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if not model.exists():
        subprocess.run([sys.executable, "-c", f"import vitkit; vitkit.save_model(vitkit.build_model("
                        f"['bolt', 'gear', 'lens', 'valve'], backbone={args.backbone!r}, image_size=224, "
                        f"augment=False), {str(model)!r})"], check=True, env=env)
    photos = write_photos(work / "photos", args.photos)
    one = next(iter(sorted((photos / "bolt").iterdir())))
    cache = work / "compile-cache"
    os.environ["VITKIT_COMPILE_CACHE"] = str(cache)
    rows = []
    for precision in ("float32", "mixed_bfloat16"):
        for attempt in ("first", "second"):
            seconds, _ = run_vitkit("predict", str(model), str(one), "--precision", precision)
            rows.append({"run": f"one photo, {precision}, {attempt} run", "seconds": seconds})
        seconds, _ = run_vitkit("predict", str(model), str(photos), "--precision", precision,
                                "--batch-size", "128", "--out", str(work / f"{precision}.csv"), "--overwrite",
                                "--cache-dir", str(work / f"image-cache-{precision}"))
        rows.append({"run": f"{args.photos} photos, {precision}, batch 128 (decoding them)", "seconds": seconds})
    done = subprocess.run([sys.executable, "-c", PHASES, str(model), str(one)], env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          capture_output=True, text=True, check=True)
    phases = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("PHASES "))[7:])
    rows += [{"run": f"  in-process: {name}", "seconds": seconds} for name, seconds in phases.items()]
    print(f"\n`vitkit predict`, {args.backbone} model file, in new processes")
    print(table(rows, ["run", "seconds"]))
    save_results("predict_startup", {"backbone": args.backbone, "photos": args.photos, "rows": rows})


if __name__ == "__main__":
    main()
