"""Shared fixtures: an isolated vitkit home, tiny photo folders and tiny models.

Every test runs with ``VITKIT_HOME`` in its own temporary folder, so caches and downloaded
weights never leak between tests or into the user's home.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vitkit.device import compilation_cache_variables

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_BACKBONE = {"patch_size": 8, "num_layers": 2, "hidden_size": 32, "num_heads": 4, "mlp_dim": 64}
TINY_CLASSES = ("circle", "square", "triangle")


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> Path:
    """One JAX compilation cache for the session, so that subprocesses reuse each other's programs."""
    return tmp_path_factory.mktemp("compile_cache")


@pytest.fixture(autouse=True)
def vitkit_home(tmp_path_factory, monkeypatch, compile_cache) -> Path:
    home = tmp_path_factory.mktemp("vitkit_home")
    monkeypatch.setenv("VITKIT_HOME", str(home))
    monkeypatch.setenv("VITKIT_COMPILE_CACHE", str(compile_cache))
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_COMPILATION_CACHE_MAX_SIZE"):  # set by in-process CLI runs; undone after each test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.delenv("VITKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("VITKIT_PROGRESS", "0")
    return home


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A coloured circle, square or triangle at a random place on a noisy background."""
    background = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    extent = int(rng.integers(size // 3, size // 2))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, 2))
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    box = (x0, y0, x0 + extent, y0 + extent)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0 + extent / 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=colour)
    return image


def make_photo_tree(root: Path, per_class: int = 8, size: int = 40, seed: int = 0,
                    classes: tuple[str, ...] = TINY_CLASSES) -> Path:
    """``root/<class>/<class>_NN.png`` images of simple shapes, one class per shape."""
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(name, size, rng).save(folder / f"{name}_{i:02d}.png")
    return root


@pytest.fixture
def photo_tree(tmp_path) -> Path:
    """A class-per-folder tree of 3 x 8 small PNG shapes."""
    return make_photo_tree(tmp_path / "photos")


@pytest.fixture
def shape_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: 60 uint8 32x32 images of three shapes and their class names."""
    rng = np.random.default_rng(1)
    labels = np.array([TINY_CLASSES[i % 3] for i in range(60)])
    images = np.stack([np.asarray(draw_shape(label, 32, rng)) for label in labels])
    return images, labels


@pytest.fixture
def tiny_model():
    """A factory of 2-layer, 32-wide classifiers on 32 px images."""
    from vitkit.models.classifier import build_model

    def make(classes=TINY_CLASSES, image_size=32, augment=False, seed=0, **options):
        return build_model(list(classes), backbone=dict(TINY_BACKBONE), image_size=image_size,
                           augment=augment, seed=seed, **options)

    return make


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args) -> (status, stdout, stderr)``: ``vitkit ARGS`` run in this process through
    ``vitkit.cli.main`` (parsing, the API and the error printing); warnings appear in stderr as the
    command line prints them."""
    from vitkit.cli import main

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)

    def run(*args):
        status = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def run_cli(*args: str, backend: str | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m vitkit ARGS`` in a new process (optionally on another Keras backend)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if backend:
        full_env["KERAS_BACKEND"] = backend
    return subprocess.run(
        [sys.executable, "-m", "vitkit", *args], cwd=cwd, env=full_env, capture_output=True,
        text=True, timeout=timeout,
    )


_COMMANDS = """
import contextlib, io, json, sys
from vitkit.cli import main
results = []
for args in json.loads(sys.argv[1]):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(args)
    results.append([status, printed.getvalue()])
print("RESULTS " + json.dumps(results))
"""


def run_commands(commands: list[list], backend: str | None = None, env: dict[str, str] | None = None,
                 timeout: float = 600) -> tuple[list[tuple[int, str]], str]:
    """Run ``vitkit`` commands one after another in one new process (optionally on another Keras
    backend): ``([(status, stdout), ...], stderr)``. Cheaper than a process per command where
    the commands only need to leave the test's process."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if backend:
        full_env["KERAS_BACKEND"] = backend
    arguments = json.dumps([[str(arg) for arg in command] for command in commands])
    done = subprocess.run([sys.executable, "-c", _COMMANDS, arguments], env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULTS "))
    return [(status, printed) for status, printed in json.loads(line[len("RESULTS "):])], done.stderr


def run_python(code: str, backend: str | None = None, timeout: float = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a Python snippet in a new process (optionally on another Keras backend, with more
    environment variables)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    if backend:
        env["KERAS_BACKEND"] = backend
    env.update(compilation_cache_variables(env))  # as the command line sets it up
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def stop_after_the_first_epoch(monkeypatch, keeper: type) -> None:
    """Make the callback class ``keeper`` raise KeyboardInterrupt once it has ended the first epoch."""
    original = keeper.on_epoch_end

    def stop(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(keeper, "on_epoch_end", stop)


def without_timing(history: list[dict]) -> list[dict]:
    """History rows without their seconds, which differ from run to run."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]
