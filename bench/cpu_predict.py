"""CPU prediction: vitkit against the original recipe (vit-keras) on the same weights and images.

Both models are ViT-B/16 + the recipe's head at 224 px with the same random weights (copied by
name from vitkit into vit-keras); both predict the same uint8 photos at the same batch size on
the same Keras backend, float32, after one warm-up batch. vitkit is timed through
``vitkit.predict`` (its batch stream and in-model scaling), the recipe as its notebooks ran it:
``preprocess_inputs`` in NumPy, then ``model.predict``. The outputs are compared too. A third
peer is vitkit with ``precision="mixed_bfloat16"`` (``vitkit predict --precision
mixed_bfloat16``), the same weights with bfloat16 matrix products. On JAX a fourth peer is what
``vitkit predict MODEL`` runs there: the model file's exported forward pass (kept program).

``vitkit predict`` and ``evaluate`` run on JAX where it is installed and no backend is named, so
the default command's speed is the JAX process's kept program against the recipe on TensorFlow,
the backend the original notebooks ran on; the summary line gives that ratio (two processes,
one after the other). ``--commands N`` also times whole ``vitkit predict`` processes on N photo
files: as users run it (no backend named; a first and a second run) and with ``--backend
tensorflow``. ``--explain N`` times whole ``vitkit explain`` processes (the default maps) on N
photo files: as users run it, with ``--backend tensorflow`` and twice with ``--backend jax``.

``--trained MODEL=MANIFEST`` (repeatable) also predicts a trained model's labelled photos in
float32 and in mixed_bfloat16 and counts the photos whose top-1 class differs: random weights
give near-equal probabilities, so they say nothing about how often bfloat16 changes a decision.

Each backend (TensorFlow, JAX) runs in its own process, since Keras fixes the backend per
process; inside a process the two peers alternate, repeat after repeat, and each keeps its
fastest pass, so load from other work on a shared machine hits both alike.

Usage::

    python bench/cpu_predict.py --images 16 --batch 8 --repeats 6
    python bench/cpu_predict.py --backends tensorflow
    python bench/cpu_predict.py --backends tensorflow --trained vitkit_demo/models/demo.weights.h5=data_manifests/sample_products/test.csv
    python bench/cpu_predict.py --commands 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"patch_size": 16, "num_layers": 12, "hidden_size": 768, "num_heads": 12, "mlp_dim": 3072}
CLASSES = ["bottle", "can", "carton", "mug"]


def recipe_model(image_size: int, classes: int):
    """The original notebooks' model: vit-keras ViT-B/16 backbone, Flatten, BN, Dense(21), BN, Dense(n)."""
    import keras

    sys.modules.setdefault("cv2", type(sys)("cv2"))  # vit-keras imports OpenCV only for image files
    from vit_keras import vit

    backbone = vit.build_model(image_size=image_size, patch_size=16, num_layers=12, hidden_size=768,
                               num_heads=12, mlp_dim=3072, name="vit-b16", classes=1000, dropout=0.1,
                               activation="linear", include_top=False, representation_size=None)
    return keras.Sequential([
        backbone, keras.layers.Flatten(), keras.layers.BatchNormalization(),
        keras.layers.Dense(21, activation=lambda t: keras.activations.gelu(t, approximate=True)),
        keras.layers.BatchNormalization(), keras.layers.Dense(classes, activation="softmax"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=6, help="timed passes of each peer, alternating; best kept")
    parser.add_argument("--backends", default="tensorflow,jax", help="comma-separated Keras backends")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_predict.json")
    parser.add_argument("--trained", action="append", default=[], metavar="MODEL=MANIFEST",
                        help="a trained model file and labelled photos: top-1 agreement of bfloat16 with float32")
    parser.add_argument("--commands", type=int, default=0, metavar="N",
                        help="also time whole vitkit predict processes on N photo files")
    parser.add_argument("--explain", type=int, default=0, metavar="N",
                        help="also time whole vitkit explain processes (its default maps) on N photo files, per backend")
    parser.add_argument("--backend", help=argparse.SUPPRESS)  # set in the per-backend processes
    args = parser.parse_args()
    if args.backend:
        print("RESULT " + json.dumps(measure(args)))
        return
    if (args.commands or args.explain) and "KERAS_BACKEND" in os.environ:
        sys.exit("unset KERAS_BACKEND: the default command's backend is part of what --commands and --explain measure")

    results = {}
    for backend in filter(None, args.backends.split(",")):  # none: only --commands / --explain
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        finished = subprocess.run([sys.executable, __file__, "--backend", backend, *sys.argv[1:]],
                                  capture_output=True, text=True, env=env)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
        if finished.returncode or not lines:
            sys.exit(f"{backend} failed:\n{finished.stderr[-3000:]}")
        results[backend] = json.loads(lines[-1][len("RESULT "):])

    if results:
        print(f"\nViT-B/16 + head, {args.image_size} px, batch {args.batch}, {args.images} images, float32, "
              f"{os.cpu_count()} CPU cores; fastest of {args.repeats} alternating passes")
        print(f"{'backend':<11} {'vitkit img/s':>12} {'recipe img/s':>12} {'vitkit/recipe':>13} {'max prob diff':>13} "
              f"{'bf16 img/s':>10} {'bf16/recipe':>11} {'bf16 diff':>9}")
        for backend, row in results.items():
            print(f"{backend:<11} {row['vitkit']:>12.2f} {row['recipe']:>12.2f} {row['ratio']:>12.2f}x "
                  f"{row['max_difference']:>13.1e} {row['vitkit_bf16']:>10.2f} {row['bf16_ratio']:>10.2f}x "
                  f"{row['bf16_difference']:>9.1e}")
            if "vitkit_kept" in row:
                print(f"{'':<11} kept forward pass (what vitkit predict runs on {backend}): {row['vitkit_kept']:.2f} img/s")
            for check in row["trained"]:
                print(f"  {backend}, {check['model']} on {check['data']}: top-1 of mixed_bfloat16 differs from float32 "
                      f"on {check['changed']} of {check['images']} photos; largest probability difference "
                      f"{check['max_difference']:.3f}")
    summary = {}
    if "vitkit_kept" in results.get("jax", {}) and "tensorflow" in results:
        summary["default_over_recipe"] = results["jax"]["vitkit_kept"] / results["tensorflow"]["recipe"]
        print(f"\nvitkit predict as users run it (JAX, kept forward pass) / the recipe on TensorFlow: "
              f"{summary['default_over_recipe']:.2f}x")
    if args.commands:
        summary["commands"] = time_commands(args.commands, args.image_size, args.batch, "predict", [
            ("as users run it, first run", []), ("as users run it, second run", []),
            ("--backend tensorflow", ["--backend", "tensorflow"])])
        for name, seconds in summary["commands"].items():
            print(f"vitkit predict, {args.commands} photo files, whole process, {name}: {seconds:.1f} s")
    if args.explain:
        summary["explain"] = time_commands(args.explain, args.image_size, args.batch, "explain", [
            ("as users run it", []), ("--backend tensorflow", ["--backend", "tensorflow"]),
            ("--backend jax, first run", ["--backend", "jax"]), ("--backend jax, second run", ["--backend", "jax"])])
        for name, seconds in summary["explain"].items():
            print(f"vitkit explain, {args.explain} photo files, whole process, {name}: {seconds:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"batch": args.batch, "images": args.images, "image_size": args.image_size,
                                    "repeats": args.repeats, "backends": results, **summary}, indent=2))


def random_model(image_size: int, seed: int = 0):
    """ViT-B/16 + head with small random weights (unit scales), the same on every backend."""
    import vitkit

    rng = np.random.default_rng(seed)
    model = vitkit.build_model(CLASSES, backbone=dict(CONFIG), image_size=image_size, augment=False)
    for variable in model.weights:
        variable.assign(rng.normal(0, 0.02, variable.shape).astype(variable.dtype) + (
            1.0 if variable.path.endswith(("gamma", "moving_variance")) else 0.0))
    return model


def photo_files_and_model(count: int, image_size: int) -> tuple[Path, Path, Path, dict[str, str]]:
    """``(folder, photos, model, env)``: ``count`` random 256-px JPEGs and a saved ViT-B/16 model file in a
    new folder, and the environment its commands run in (its own compilation cache)."""
    import tempfile

    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="vitkit-cpu-commands-"))
    rng = np.random.default_rng(1)
    photos = folder / "photos"
    photos.mkdir()
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(photos / f"{index}.jpg")
    model = folder / "vitb16.weights.h5"
    maker = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import cpu_predict, vitkit; "
             f"vitkit.save_model(cpu_predict.random_model({image_size}), {str(model)!r})")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "VITKIT_COMPILE_CACHE": str(folder / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", maker], env=env, check=True, capture_output=True)
    return folder, photos, model, env


def time_commands(count: int, image_size: int, batch: int, command: str,
                  runs: list[tuple[str, list[str]]]) -> dict[str, float]:
    """Wall seconds of whole ``vitkit COMMAND`` processes on ``count`` JPEG files, one per run
    ``(name, options before the command)``, in order."""
    folder, photos, model, env = photo_files_and_model(count, image_size)
    seconds = {}
    for name, before in runs:
        out = folder / f"{command}-{len(seconds)}"
        output = ["--out", f"{out}.csv", "--batch-size", str(batch)] if command == "predict" else ["--out", str(out)]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vitkit", *before, command, str(model), str(photos), *output],
                       env=env, check=True, capture_output=True, cwd=folder)
        seconds[name] = time.perf_counter() - started
    return seconds


def measure(args) -> dict:
    """Both peers on this process's backend: fastest pass of each, images/s, and their agreement."""
    import keras

    import vitkit
    from vitkit.training.building import rebuild_model

    rng = np.random.default_rng(0)
    model = random_model(args.image_size)
    half = rebuild_model(model, "mixed_bfloat16")
    half.set_weights(model.get_weights())
    recipe = recipe_model(args.image_size, len(CLASSES))
    copy_into_recipe(model, recipe, args.image_size)
    photos = rng.integers(0, 256, (args.images, args.image_size, args.image_size, 3), dtype=np.uint8)

    def run_vitkit():
        table = vitkit.predict(model, photos, batch_size=args.batch, progress=False)
        return table[[f"p_{c}" for c in CLASSES]].to_numpy()

    def run_bf16():
        table = vitkit.predict(half, photos, batch_size=args.batch, progress=False)
        return table[[f"p_{c}" for c in CLASSES]].to_numpy()

    def run_recipe():
        from vit_keras import vit

        return recipe.predict(vit.preprocess_inputs(photos.astype("float32")), batch_size=args.batch, verbose=0)

    peers = {"vitkit": run_vitkit, "recipe": run_recipe, "vitkit_bf16": run_bf16}
    if keras.backend.backend() == "jax":
        kept = kept_forward_pass(model)

        def run_kept():
            table = vitkit.predict(kept, photos, batch_size=args.batch, progress=False)
            return table[[f"p_{c}" for c in CLASSES]].to_numpy()

        peers["vitkit_kept"] = run_kept
    for run in peers.values():  # warm-up: tracing and compilation
        run()
    fastest = {name: float("inf") for name in peers}
    outputs = {}
    for _ in range(args.repeats):
        for name, run in peers.items():
            started = time.perf_counter()
            outputs[name] = run()
            fastest[name] = min(fastest[name], time.perf_counter() - started)
    speeds = {name: args.images / seconds for name, seconds in fastest.items()}
    return {**speeds, "ratio": speeds["vitkit"] / speeds["recipe"],
            **({"kept_difference": float(np.abs(outputs["vitkit_kept"] - outputs["vitkit"]).max())}
               if "vitkit_kept" in outputs else {}),
            "max_difference": float(np.abs(outputs["vitkit"] - outputs["recipe"]).max()),
            "bf16_ratio": speeds["vitkit_bf16"] / speeds["recipe"],
            "bf16_difference": float(np.abs(outputs["vitkit_bf16"] - outputs["vitkit"]).max()),
            "trained": [top1_agreement(*pair.split("=", 1)) for pair in args.trained]}


def kept_forward_pass(model):
    """``model`` saved and exported as ``vitkit predict`` does on JAX (a temporary program folder)."""
    import tempfile

    import vitkit
    from vitkit.device import configure_compilation_cache
    from vitkit.prediction import as_predictor

    folder = Path(tempfile.mkdtemp(prefix="vitkit-kept-"))
    os.environ["VITKIT_COMPILE_CACHE"] = str(folder / "cache")
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    configure_compilation_cache()
    path = folder / "vitb16.weights.h5"
    vitkit.save_model(model, path)
    return as_predictor(path)


def top1_agreement(model_path: str, data: str) -> dict:
    """A trained model's photos predicted in float32 and in mixed_bfloat16: changed top-1 classes."""
    from vitkit.prediction import as_model, images_for, predict_probabilities

    exact = as_model(model_path)
    images = images_for(exact, data)
    reference = predict_probabilities(exact, images)
    halved = predict_probabilities(as_model(model_path, precision="mixed_bfloat16"), images)
    return {"model": model_path, "data": data, "images": len(reference),
            "changed": int((reference.argmax(1) != halved.argmax(1)).sum()),
            "max_difference": float(np.abs(reference - halved).max())}


def copy_into_recipe(model, recipe, image_size: int) -> None:
    """Give the recipe model vitkit's weights: the backbone through vit-keras' own checkpoint loader."""
    import tempfile

    from vit_keras import utils

    from vitkit.models.convert import flax_arrays

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "vitkit.npz"
        np.savez(checkpoint, **flax_arrays(model))
        grid = image_size // CONFIG["patch_size"]
        utils.load_weights_numpy(recipe.layers[0], str(checkpoint), pretrained_top=False,
                                 num_x_patches=grid, num_y_patches=grid)
    head = {layer.name: layer for layer in model.layers if layer.name.startswith("head_")}
    for name, layer in zip(("head_norm_0", "head_hidden", "head_norm_1", "head_output"), recipe.layers[2:]):
        layer.set_weights(head[name].get_weights())


if __name__ == "__main__":
    main()
