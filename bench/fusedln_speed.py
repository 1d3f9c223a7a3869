"""Residual add + LayerNorm alone: XLA's fusion of the plain ``jax.numpy`` form against the Pallas
kernels of vitkit/models/fusedln.py, forward and forward + backward, on one ViT-B/16 batch's
stream ((128 * 197, 768) bfloat16 by default), for a few tilings of the kernels.

Each row gives milliseconds per call (median of the repeats), the bandwidth that the least
traffic the call must move would take at that speed, and the largest error of the outputs and
gradients relative to a float32 computation of the same inputs (the XLA row's error is what
bfloat16 costs anyway). A failing row prints its error and the others still run. Needs JAX only
(not Keras); in the model XLA also fuses LayerNorm with its neighbours, which this leaves out.

Usage (GPU machine)::

    python bench/fusedln_speed.py
    python bench/fusedln_speed.py --tilings 4x8,1x4,2x4,4x4,8x8,16x8 --iterations 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vitkit.models import fusedln  # noqa: E402

EPSILON = 1e-6


def _inputs(rows: int, width: int, dtype: str):
    """``x, r, gamma, beta, ds, dy`` on the default device."""
    rng = np.random.default_rng(0)
    big = [rng.normal(size=(rows, width)).astype("float32") for _ in range(4)]
    small = [rng.normal(size=width).astype("float32") for _ in range(2)]
    x, r, ds, dy = (jnp.asarray(a, dtype) for a in big)
    gamma, beta = (jnp.asarray(a) for a in small)
    return x, r, gamma, beta, ds, dy


def _functions(norm, add: bool):
    """Jitted ``forward(x, r, gamma, beta)`` and ``both(x, r, gamma, beta, ds, dy)`` (gradients)."""

    def forward(x, r, gamma, beta):
        return norm(x, r if add else None, gamma, beta, EPSILON)

    def both(x, r, gamma, beta, ds, dy):
        outputs, pullback = jax.vjp(forward, x, r, gamma, beta)
        return outputs, pullback((ds, dy))

    return jax.jit(forward), jax.jit(both)


def _milliseconds(function, arguments, iterations: int, repeats: int) -> float:
    jax.block_until_ready(function(*arguments))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(iterations):
            out = function(*arguments)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - started) / iterations * 1e3)
    return statistics.median(times)


def _largest_error(outputs, truth) -> float:
    """Largest |difference| over the outputs and gradients, each relative to its largest |value|."""
    errors = []
    for actual, expected in zip(jax.tree_util.tree_leaves(outputs), jax.tree_util.tree_leaves(truth)):
        actual, expected = np.asarray(actual, "float32"), np.asarray(expected, "float32")
        errors.append(float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12)))
    return max(errors)


def _variants(tilings: list[str]):
    """``(name, norm function)``: XLA, the kernels' default plan, then each ROWSxWARPS tiling."""
    yield "xla", fusedln.reference_add_layer_norm
    yield "pallas", fusedln.add_layer_norm
    for tiling in tilings:
        rows, warps = (int(part) for part in tiling.split("x"))

        def tiled(x, r, gamma, beta, epsilon, rows=rows, warps=warps):
            return fusedln.add_layer_norm(x, r, gamma, beta, epsilon, block_rows=rows, num_warps=warps)

        yield f"pallas {tiling}", tiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128 * 197)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tilings", default="1x4,2x4,4x4,8x8", help="ROWSxWARPS per program, comma-separated")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fusedln_speed.json")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, ({args.rows}, {args.width}) {args.dtype}, "
          f"default plan {fusedln.plan(args.rows, args.width, True, EPSILON)}", flush=True)

    arguments = _inputs(args.rows, args.width, args.dtype)
    wide = [a.astype("float32") for a in arguments]
    element = jnp.dtype(args.dtype).itemsize * args.rows * args.width
    rows = []
    for add in (True, False):
        truth = _functions(fusedln.reference_add_layer_norm, add)[1](*wide)
        # Least traffic: forward reads x (and r), writes y (and s); backward reads s, dy (and ds), writes dx.
        traffic = {"forward": element * (4 if add else 2), "both": element * (4 if add else 2) + element * (4 if add else 3)}
        for name, norm in _variants(args.tilings.split(",") if args.tilings else []):
            label = f"{'add+LN' if add else 'LN':<7}{name:<14}"
            try:
                forward, both = _functions(norm, add)
                error = _largest_error(both(*arguments), truth)
                forward_ms = _milliseconds(forward, arguments[:4], args.iterations, args.repeats)
                both_ms = _milliseconds(both, arguments, args.iterations, args.repeats)
            except Exception as failure:  # one failing variant must not lose the others' figures
                traceback.print_exc()
                print(f"{label} failed: {type(failure).__name__}: {str(failure)[:300]}", flush=True)
                rows.append({"op": label.strip(), "error": f"{type(failure).__name__}: {failure}"[:2000]})
                continue
            rows.append({"op": label.strip(), "forward_ms": forward_ms, "forward_backward_ms": both_ms,
                         "forward_GB_per_s": traffic["forward"] / forward_ms / 1e6,
                         "forward_backward_GB_per_s": traffic["both"] / both_ms / 1e6,
                         "largest_relative_error": error})
            print(f"{label} forward {forward_ms:7.3f} ms ({rows[-1]['forward_GB_per_s']:5.0f} GB/s)   "
                  f"forward+backward {both_ms:7.3f} ms ({rows[-1]['forward_backward_GB_per_s']:5.0f} GB/s)   "
                  f"error {error:.1e}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": args.rows, "width": args.width, "dtype": args.dtype,
                                    "device": jax.devices()[0].device_kind, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
