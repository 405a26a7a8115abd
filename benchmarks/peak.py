"""This machine's practical compute peak, in GFLOP/s, to state a training step as a fraction of it.

Times a 2048x2048 matrix product and a ResNet-block-sized 3x3 convolution (256 -> 256 channels on a
64x64 map, batch 1), each in fp32 and bf16 (autocast for the convolution), on the CPU or a CUDA device,
with the thread count torch uses (set OMP_NUM_THREADS to change it). Divide `train_step.py`'s
``gflops_per_s`` by the conv3x3 rate of the same precision: the ResNet blocks' 3x3 convolutions are
most of a CycleGAN step's FLOPs. Prints one JSON object.

    python benchmarks/peak.py
    OMP_NUM_THREADS=1 python benchmarks/peak.py
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch


def rate(fn: Callable[[], object], flops: float, repeats: int, device: torch.device) -> float:
    """GFLOP/s of `fn` (one warm-up call, then the best of three runs of `repeats` calls)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return flops * repeats / best / 1e9


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=2048, help="side of the square matrices")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    n = args.size
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a16, b16 = a.bfloat16(), b.bfloat16()
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(device)
    x = torch.randn(1, 256, 64, 64, device=device)
    conv_flops = 2 * 256 * 256 * 9 * 64 * 64

    def conv_bf16() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return conv(x)

    with torch.inference_mode():
        result = {
            "matmul_fp32_gflops": rate(lambda: a @ b, 2 * n**3, args.repeats, device),
            "matmul_bf16_gflops": rate(lambda: a16 @ b16, 2 * n**3, args.repeats, device),
            "conv3x3_fp32_gflops": rate(lambda: conv(x), conv_flops, args.repeats, device),
            "conv3x3_bf16_gflops": rate(conv_bf16, conv_flops, args.repeats, device),
        }
    result = {k: round(v, 1) for k, v in result.items()} | {"device": str(device), "threads": torch.get_num_threads()}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
