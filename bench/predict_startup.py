"""Start-up of ``vitkit predict``: one photo and many, first and second run in new processes.

    python bench/predict_startup.py [--photos 8192] [--backbone vit_b16]

Writes a model file of ``--backbone`` (random weights, 4 classes, 224 px) and 256-px JPEGs, then
times whole ``vitkit predict`` processes, each with the command's defaults (batch size
included): one photo with an empty compilation cache, then again (the cache filled by the
first run), in float32 and with ``--precision mixed_bfloat16``, and all ``--photos`` photos
(each precision decoding them into its own empty image cache, as a first run on new photos
does). The many photos run once more in float32 with an empty compilation cache, as a first
run ever. A last process runs a second run's steps in-process with a timer around each
(imports, the kept record, the photo, the program compiled from the cache, the weights on the
device, the first prediction, a second one), to show where its seconds go. JAX backend only:
a second run predicts through the forward pass the first run exported
(:mod:`vitkit.models.exported`). Prints one table and writes bench/results/predict_startup.json.
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
from vitkit.device import allocate_as_needed, configure_compilation_cache, configure_xla
configure_xla(); configure_compilation_cache(); allocate_as_needed()  # as vitkit predict starts
from vitkit.prediction import images_for, kept_predictor, predict_probabilities
lap("python, numpy, pandas, vitkit.prediction")
model = kept_predictor(sys.argv[1])
assert model is not None, "no kept program: run vitkit predict on the JAX backend first"
lap("import jax, read the kept record (the weights start for the device)")
images = images_for(model, [sys.argv[2]])
lap("read the photo")
model.prepare(32)  # the default batch; on a CPU it waits for the images, in the first prediction
lap("JAX's devices, the program compiled from the cache")
model._device_weights()
lap("the weights on the device (what is left of it)")
predict_probabilities(model, images)
lap("first prediction")
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
                                "--out", str(work / f"{precision}.csv"), "--overwrite",
                                "--cache-dir", str(work / f"image-cache-{precision}"))
        rows.append({"run": f"{args.photos} photos, {precision} (decoding them)", "seconds": seconds})
    os.environ["VITKIT_COMPILE_CACHE"] = str(work / "empty-compile-cache")
    seconds, _ = run_vitkit("predict", str(model), str(photos), "--out", str(work / "cold.csv"), "--overwrite",
                            "--cache-dir", str(work / "image-cache-cold"))
    rows.append({"run": f"{args.photos} photos, float32, empty compilation cache (a first run)", "seconds": seconds})
    done = subprocess.run([sys.executable, "-c", PHASES, str(model), str(one)], capture_output=True, text=True,
                          env={**env, "VITKIT_COMPILE_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode:
        sys.exit(f"the timed second run failed:\n{done.stderr[-3000:]}")
    phases = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("PHASES "))[7:])
    rows += [{"run": f"  in-process: {name}", "seconds": seconds} for name, seconds in phases.items()]
    kept = len(list((cache / "programs").glob("*.program")))
    print(f"\n`vitkit predict`, {args.backbone} model file, in new processes ({kept} programs kept)")
    print(table(rows, ["run", "seconds"]))
    save_results("predict_startup", {"backbone": args.backbone, "photos": args.photos, "programs_kept": kept,
                                     "rows": rows})


if __name__ == "__main__":
    main()
