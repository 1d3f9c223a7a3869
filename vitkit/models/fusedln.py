"""LayerNorm with the residual add before it, as Pallas kernels (forward and backward) for GPUs.

``add_layer_norm(x, r, gamma, beta)`` returns ``(s, y)`` with ``s = x + r`` (the residual stream
that goes on) and ``y = LayerNorm(s) * gamma + beta``; ``layer_norm`` is the same without the
add. In a pre-norm block the attention branch's residual add is followed at once by the MLP's
LayerNorm, so one kernel reads ``x`` and ``r`` and writes ``s`` and ``y``; its backward reads
``s``, the two cotangents and the per-row statistics, and writes one gradient for both ``x``
and ``r`` plus per-program partial sums of the ``gamma`` and ``beta`` gradients.

Each program of a kernel takes a tile of whole rows, padded to a power of two and masked.
Statistics are float32 whatever the input's type. Widths above :data:`MAX_WIDTH`, mixed input
types and types other than float32, bfloat16 and float16 take :func:`reference_add_layer_norm`
(plain ``jax.numpy``, differentiated by JAX). The kernels lower through Triton on GPUs; elsewhere
they run in Pallas' interpreter (slow: for tests). This module needs JAX only, not Keras.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MAX_WIDTH = 8192
KERNEL_DTYPES = ("float32", "bfloat16", "float16")
# Elements of one program's tile: 2 rows of a 768-wide (padded to 1024) ViT-B stream, with 4
# warps; 4 rows and 8 warps trained 0.8% fewer images per second (bench/gpu_profile.py, H200).
TILE_ELEMENTS = 2048
# Programs of the backward kernel, each looping over several row tiles so that the partial
# sums of the gamma and beta gradients stay a few MB (a multiple of an H200's 132 SMs' worth).
BACKWARD_PROGRAMS = 1024


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the kernels compute and how they split an ``(m, n)`` problem: with or without the
    residual ``add``, ``rows`` per tile (a power of two), the row padded to ``width``, Triton's
    ``num_warps``, and whether to run in Pallas' interpreter."""

    add: bool
    epsilon: float
    rows: int
    width: int
    num_warps: int
    interpret: bool
    backward_programs: int = BACKWARD_PROGRAMS


def plan(m: int, n: int, add: bool, epsilon: float, *, block_rows: int | None = None, num_warps: int | None = None,
         interpret: bool | None = None, backward_programs: int = BACKWARD_PROGRAMS) -> Plan:
    """The default :class:`Plan` for ``m`` rows of width ``n``; any argument given overrides it."""
    width = pl.next_power_of_2(n)
    rows = block_rows or max(1, min(TILE_ELEMENTS // width, pl.next_power_of_2(m)))
    if rows & (rows - 1):
        raise ValueError(f"block_rows must be a power of two, not {rows}")
    warps = num_warps or min(8, max(1, rows * width // 512))
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    return Plan(add, float(epsilon), rows, width, warps, bool(interpret), backward_programs)


def reference_add_layer_norm(x, r, gamma, beta, epsilon: float = 1e-6):
    """``(s, y)`` in plain ``jax.numpy``: ``s = x + r`` (``x`` where ``r`` is None) in the inputs'
    type, ``y = LayerNorm(s) * gamma + beta`` computed in float32 and returned in ``s``'s type."""
    s = x if r is None else x + r
    wide = s.astype(jnp.float32)
    mean = jnp.mean(wide, axis=-1, keepdims=True)
    centred = wide - mean
    variance = jnp.mean(centred * centred, axis=-1, keepdims=True)
    y = centred * lax.rsqrt(variance + epsilon) * gamma.astype(jnp.float32) + beta.astype(jnp.float32)
    return s, y.astype(s.dtype)


def add_layer_norm(x, r, gamma, beta, epsilon: float = 1e-6, **options):
    """``(s, y)``: ``s = x + r`` and ``y = LayerNorm(s) * gamma + beta`` over the last axis, as
    fused Pallas kernels with a custom gradient (``r`` None: no add, ``s`` is ``x``).

    ``options`` (``block_rows``, ``num_warps``, ``interpret``, ``backward_programs``) override
    :func:`plan`'s defaults; ``interpret`` defaults to True off GPUs.
    """
    if not _kernels_apply(x, r):
        return reference_add_layer_norm(x, r, gamma, beta, epsilon)
    n = x.shape[-1]
    m = x.size // n
    chosen = plan(m, n, r is not None, epsilon, **options)
    flat = [None if part is None else part.reshape(m, n) for part in (x, r)]
    s, y = _fused(*flat, gamma.astype(jnp.float32), beta.astype(jnp.float32), chosen)
    return (x if r is None else s.reshape(x.shape)), y.reshape(x.shape)


def _kernels_apply(x, r) -> bool:
    """Whether the kernels take these inputs: known sizes (Keras infers output shapes with symbolic
    ones), one type of :data:`KERNEL_DTYPES`, some rows, at most :data:`MAX_WIDTH` wide."""
    types = {jnp.dtype(x.dtype)} | ({jnp.dtype(r.dtype)} if r is not None else set())
    return (all(isinstance(size, int) for size in x.shape) and len(types) == 1
            and jnp.dtype(x.dtype).name in KERNEL_DTYPES and x.size > 0 and x.shape[-1] <= MAX_WIDTH)


def layer_norm(x, gamma, beta, epsilon: float = 1e-6, **options):
    """``LayerNorm(x) * gamma + beta`` over the last axis as a fused Pallas kernel (see :func:`add_layer_norm`)."""
    return add_layer_norm(x, None, gamma, beta, epsilon, **options)[1]


def _tile(plan_: Plan, m: int, n: int, tile):
    """Row and column indices of tile ``tile`` and its masks: ``(rows, cols, row_mask, mask)``."""
    rows = tile * plan_.rows + jnp.arange(plan_.rows)
    cols = jnp.arange(plan_.width)
    row_mask = rows < m
    return rows, cols, row_mask, row_mask[:, None] & (cols < n)[None, :]


def _load(ref, rows, cols, mask):
    return plgpu.load(ref.at[rows[:, None], cols[None, :]], mask=mask, other=0.0).astype(jnp.float32)


def _store(ref, rows, cols, mask, value):
    plgpu.store(ref.at[rows[:, None], cols[None, :]], value.astype(ref.dtype), mask=mask)


def _forward_kernel(*refs, plan_: Plan):
    if plan_.add:
        x_ref, r_ref, gamma_ref, beta_ref, s_ref, y_ref, mean_ref, rstd_ref = refs
    else:
        x_ref, gamma_ref, beta_ref, y_ref, mean_ref, rstd_ref = refs
    m, n = x_ref.shape
    rows, cols, row_mask, mask = _tile(plan_, m, n, pl.program_id(0))
    s = _load(x_ref, rows, cols, mask)
    if plan_.add:
        s = s + _load(r_ref, rows, cols, mask)
        _store(s_ref, rows, cols, mask, s)
        # The statistics are those of the stored, rounded sum, as in the unfused add then LayerNorm.
        s = s.astype(s_ref.dtype).astype(jnp.float32)
    mean = jnp.sum(s, axis=1) / n
    centred = jnp.where(mask, s - mean[:, None], 0.0)
    rstd = lax.rsqrt(jnp.sum(centred * centred, axis=1) / n + plan_.epsilon)
    col_mask = cols < n
    gamma = plgpu.load(gamma_ref.at[cols], mask=col_mask, other=0.0)
    beta = plgpu.load(beta_ref.at[cols], mask=col_mask, other=0.0)
    _store(y_ref, rows, cols, mask, centred * rstd[:, None] * gamma[None, :] + beta[None, :])
    plgpu.store(mean_ref.at[rows], mean, mask=row_mask)
    plgpu.store(rstd_ref.at[rows], rstd, mask=row_mask)


def _backward_kernel(*refs, plan_: Plan, tiles_per_program: int):
    if plan_.add:
        s_ref, dy_ref, ds_ref, gamma_ref, mean_ref, rstd_ref, dx_ref, dgamma_ref, dbeta_ref = refs
    else:
        s_ref, dy_ref, gamma_ref, mean_ref, rstd_ref, dx_ref, dgamma_ref, dbeta_ref = refs
    m, n = s_ref.shape
    program = pl.program_id(0)
    cols = jnp.arange(plan_.width)
    gamma = plgpu.load(gamma_ref.at[cols], mask=cols < n, other=0.0)

    def tile_step(step, sums):
        rows, _, row_mask, mask = _tile(plan_, m, n, program * tiles_per_program + step)
        mean = plgpu.load(mean_ref.at[rows], mask=row_mask, other=0.0)
        rstd = plgpu.load(rstd_ref.at[rows], mask=row_mask, other=0.0)
        normed = jnp.where(mask, (_load(s_ref, rows, cols, mask) - mean[:, None]) * rstd[:, None], 0.0)
        dy = _load(dy_ref, rows, cols, mask)
        scaled = dy * gamma[None, :]
        along = jnp.sum(normed * scaled, axis=1)[:, None] / n
        mean_scaled = jnp.sum(scaled, axis=1)[:, None] / n
        dx = (scaled - normed * along - mean_scaled) * rstd[:, None]
        if plan_.add:
            dx = dx + _load(ds_ref, rows, cols, mask)
        _store(dx_ref, rows, cols, mask, dx)
        dgamma, dbeta = sums
        return dgamma + jnp.sum(dy * normed, axis=0), dbeta + jnp.sum(dy, axis=0)

    zeros = jnp.zeros(plan_.width, jnp.float32)
    dgamma, dbeta = lax.fori_loop(0, tiles_per_program, tile_step, (zeros, zeros))
    plgpu.store(dgamma_ref.at[program * plan_.width + cols], dgamma)
    plgpu.store(dbeta_ref.at[program * plan_.width + cols], dbeta)


def _call(kernel, name: str, plan_: Plan, grid: int, out_shape):
    return pl.pallas_call(
        kernel, grid=(grid,), out_shape=out_shape, interpret=plan_.interpret, name=name,
        compiler_params=plgpu.CompilerParams(num_warps=plan_.num_warps, num_stages=1),
    )


def _forward(x, r, gamma, beta, plan_: Plan):
    m, n = x.shape
    stats = [jax.ShapeDtypeStruct((m,), jnp.float32)] * 2
    outputs = [jax.ShapeDtypeStruct((m, n), x.dtype)] * (2 if plan_.add else 1) + stats
    inputs = (x, r, gamma, beta) if plan_.add else (x, gamma, beta)
    results = _call(functools.partial(_forward_kernel, plan_=plan_), "add_layer_norm" if plan_.add else "layer_norm",
                    plan_, pl.cdiv(m, plan_.rows), outputs)(*inputs)
    s, y, mean, rstd = results if plan_.add else (x, *results)
    return (s, y), (s, gamma, mean, rstd)


def _backward(plan_: Plan, saved, cotangents):
    s, gamma, mean, rstd = saved
    ds, dy = cotangents
    m, n = s.shape
    tiles = pl.cdiv(m, plan_.rows)
    tiles_per_program = pl.cdiv(tiles, plan_.backward_programs)
    programs = pl.cdiv(tiles, tiles_per_program)
    partial = jax.ShapeDtypeStruct((programs * plan_.width,), jnp.float32)
    kernel = functools.partial(_backward_kernel, plan_=plan_, tiles_per_program=tiles_per_program)
    # Without the add, s is x itself and its cotangent is unused (the caller returns x, not s).
    inputs = (s, dy, ds, gamma, mean, rstd) if plan_.add else (s, dy, gamma, mean, rstd)
    dx, dgamma, dbeta = _call(kernel, "add_layer_norm_grad" if plan_.add else "layer_norm_grad", plan_, programs,
                              [jax.ShapeDtypeStruct((m, n), s.dtype), partial, partial])(*inputs)
    dgamma, dbeta = (part.reshape(programs, plan_.width)[:, :n].sum(axis=0) for part in (dgamma, dbeta))
    return dx, (dx if plan_.add else None), dgamma, dbeta


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(x, r, gamma, beta, plan_: Plan):
    return _forward(x, r, gamma, beta, plan_)[0]


_fused.defvjp(_forward, _backward)
