"""GPU kernel time of one ViT-B/16 training step and one forward pass: vitkit (JAX) beside timm.

Traces a few steps of each with the framework's profiler, sums the GPU time of every kernel and
groups it: matrix products, attention, convolution, and fused element-wise / normalisation
kernels. Run where a throughput target is missed, to see which group the difference sits in.

Usage (GPU machine)::

    KERAS_BACKEND=jax python bench/gpu_kernel_profile.py --peer vitkit
    python bench/gpu_kernel_profile.py --peer timm
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import re
import tempfile
from pathlib import Path

GROUPS = (
    ("attention", re.compile(r"fmha|flash|attention|sdpa|cudnn.*(softmax|attn)|scaled_dot", re.I)),
    ("convolution", re.compile(r"conv(?!ert)|implicit_gemm|winograd|fprop|dgrad|wgrad", re.I)),
    ("matmul", re.compile(r"gemm|cublas|matmul|sm90_xmma|nvjet|cutlass|dot|\bmm\b|addmm", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach", re.I)),
)
BATCH, STEPS = 128, 5


def group_of(kernel: str) -> str:
    for name, pattern in GROUPS:
        if pattern.search(kernel):
            return name
    return "element-wise / norm / other"


def summarise(kernels: dict[tuple[str, str], float], steps: int, top: int = 12,
              sources: dict[str, str] | None = None) -> dict:
    """Kernel time per step by group, and the ``top`` kernels; ``kernels`` maps ``(kernel,
    instruction)`` (the HLO instruction that launched it, or "") to microseconds. With ``sources``
    (instruction to the model operation it computes), also the time per operation, summed over
    the encoder blocks."""
    def source(kernel: str, instruction: str) -> str:
        # XLA's own kernels are named after their instruction; library calls carry it as a stat.
        return (sources or {}).get(instruction) or (sources or {}).get(kernel, "")

    groups, operations = collections.Counter(), collections.Counter()
    for (kernel, instruction), microseconds in kernels.items():
        groups[group_of(kernel)] += microseconds / steps
        if sources is not None:
            origin = source(kernel, instruction)
            operations[operation_of(origin) if origin else kernel] += microseconds / steps
    slowest = sorted(kernels.items(), key=lambda item: -item[1])[:top]
    summary = {"ms_per_step_by_group": {k: round(v / 1000, 3) for k, v in groups.most_common()},
               "ms_per_step": round(sum(groups.values()) / 1000, 3),
               "top_kernels_ms_per_step": [(kernel[:90], round(v / steps / 1000, 3), source(kernel, instruction))
                                           for (kernel, instruction), v in slowest]}
    if sources is not None:
        summary["ms_per_step_by_operation"] = [(k, round(v / 1000, 3)) for k, v in operations.most_common(top)]
    return summary


def hlo_sources(compiled_text: str) -> dict[str, str]:
    """Instruction name to the JAX operation it came from (``op_name``), from optimized HLO text.

    Fusions usually carry no ``op_name`` of their own: they take that of the root of the
    computation they call (or of its first instruction that has one)."""
    sources, calls, computations, computation = {}, {}, collections.defaultdict(list), None
    for line in compiled_text.splitlines():
        opening = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if opening and not line.startswith(" "):
            computation = opening[1]
            continue
        instruction = re.match(r"^\s*(ROOT )?%?([\w.\-]+) = ", line)
        if not instruction:
            continue
        name = instruction[2]
        called = re.search(r"calls=%?([\w.\-]+)", line)
        if called:
            calls[name] = called[1]
        op_name = re.search(r'op_name="([^"]*)"', line)
        if op_name:
            sources[name] = op_name[1]
            computations[computation].insert(0 if instruction[1] else len(computations[computation]), op_name[1])
    for name, computation in calls.items():
        if name not in sources and computations[computation]:
            sources[name] = computations[computation][0]
    # The profiler names kernels as XLA's launch thunks do: "." in an instruction's name becomes "_".
    return {**sources, **{name.replace(".", "_"): op for name, op in sources.items()}}


def operation_of(op_name: str) -> str:
    """An operation's name with the block numbers and JAX's transformation wrappers taken out, and
    whether it belongs to the backward pass: the 12 blocks' copies of one operation share a name."""
    backward = "transpose(" in op_name
    path, unwrapped = "", op_name.replace("jit(train)/", "")
    while path != unwrapped:
        path, unwrapped = unwrapped, re.sub(r"(jit|jvp|transpose|checkpoint|remat|pjit)\(([^()]*)\)", r"\2", unwrapped)
    path = re.sub(r"_\d+\b|\d+", "#", path)
    return ("backward " if backward else "forward ") + path[-110:]


def _convolution_embedding(self, images):
    """PatchEmbedding.call as a strided convolution, for comparison."""
    from keras import ops

    kernel = ops.cast(self.kernel, images.dtype)
    patches = ops.conv(images, kernel, strides=self.patch_size, padding="valid")
    return ops.reshape(patches, (ops.shape(images)[0], -1, self.hidden_size)) + ops.cast(self.bias, images.dtype)


def profile_vitkit(embedding: str, top: int, hlo: Path | None = None) -> dict:
    from vitkit.device import configure_xla

    configure_xla()
    import jax
    import keras
    import numpy as np
    from jax.profiler import ProfileData

    import vitkit
    import vitkit.models.backbone
    from gpu_profile import jitted_steps

    if embedding == "convolution":
        vitkit.models.backbone.PatchEmbedding.call = _convolution_embedding
    keras.config.set_dtype_policy("mixed_bfloat16")
    config = {"patch_size": 16, "num_layers": 12, "hidden_size": 768, "num_heads": 12, "mlp_dim": 3072}
    model = vitkit.build_model(10, backbone=config, image_size=224, augment=False)
    state, train, forward = jitted_steps(model, keras.optimizers.Adam(1e-4))
    x = jax.device_put(np.random.default_rng(0).integers(0, 256, (BATCH, 224, 224, 3), dtype=np.uint8))
    y = jax.device_put(np.eye(10, dtype="float32")[np.arange(BATCH) % 10])

    def traced(run) -> dict[tuple[str, str], float]:
        """``(kernel, HLO instruction)`` to microseconds."""
        run()
        folder = tempfile.mkdtemp()
        jax.profiler.start_trace(folder)
        run()
        jax.profiler.stop_trace()
        data = ProfileData.from_file(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0])
        kernels = collections.Counter()
        for plane in data.planes:
            if not plane.name.startswith("/device:GPU"):
                continue
            for line in plane.lines:
                if "stream" not in line.name.lower():
                    continue
                for event in line.events:
                    kernels[event.name, dict(event.stats).get("hlo_op", "")] += event.duration_ns / 1000
        return kernels

    def run_train():
        nonlocal state
        t, n, o = state
        for _ in range(STEPS):
            t, n, o, value = train(t, n, o, x, y)
        value.block_until_ready()
        state = (t, n, o)

    def run_forward():
        for _ in range(STEPS):
            out = forward(state[0], state[1], x)
        out.block_until_ready()

    train_hlo = train.lower(*state, x, y).compile().as_text()
    if hlo is not None:
        hlo.write_text(train_hlo)
    sources = {"train": hlo_sources(train_hlo), "forward": hlo_sources(forward.lower(state[0], state[1], x).compile().as_text())}
    return {"train": summarise(traced(run_train), STEPS, top, sources["train"]),
            "forward": summarise(traced(run_forward), STEPS, top, sources["forward"])}


def profile_timm(top: int) -> dict:
    import timm
    import torch
    from torch.profiler import ProfilerActivity, profile

    model = timm.create_model("vit_base_patch16_224", num_classes=10).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    compiled = torch.compile(model)
    pixels = torch.randint(0, 256, (BATCH, 3, 224, 224), dtype=torch.uint8, device="cuda")
    labels = torch.randint(0, 10, (BATCH,), device="cuda")

    def scaled():
        return (pixels.float() / 127.5 - 1).contiguous(memory_format=torch.channels_last)

    def run_train():
        model.train()
        for _ in range(STEPS):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(compiled(scaled()), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    @torch.no_grad()
    def run_forward():
        model.eval()
        for _ in range(STEPS):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                compiled(scaled())
        torch.cuda.synchronize()

    def traced(run) -> dict[tuple[str, str], float]:
        run()
        with profile(activities=[ProfilerActivity.CUDA]) as recorded:
            run()
        kernels = collections.Counter()
        for event in recorded.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                kernels[event.name, ""] += event.device_time
        return kernels

    return {"train": summarise(traced(run_train), STEPS, top), "forward": summarise(traced(run_forward), STEPS, top)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=("vitkit", "timm"), required=True)
    parser.add_argument("--embedding", choices=("matmul", "convolution"), default="matmul",
                        help="vitkit's patch embedding as it is, or as a strided convolution")
    parser.add_argument("--top", type=int, default=6, help="kernels (and, for vitkit, model operations) to list")
    parser.add_argument("--hlo", type=Path, help="write vitkit's optimized training-step HLO here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = profile_vitkit(args.embedding, args.top, args.hlo) if args.peer == "vitkit" else profile_timm(args.top)
    for phase, summary in result.items():
        print(f"{args.peer} {phase}: {summary['ms_per_step']:.2f} ms of GPU kernels per step of {BATCH}")
        for group, ms in summary["ms_per_step_by_group"].items():
            print(f"  {group:<30} {ms:8.2f} ms")
        for kernel, ms, source in summary["top_kernels_ms_per_step"]:
            print(f"    {ms:7.3f} ms  {kernel}  {source[-100:]}")
        for operation, ms in summary.get("ms_per_step_by_operation", []):
            print(f"  {ms:7.3f} ms  {operation}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
