"""``train.precision: auto`` against fp32: what auto chose on this machine, and its step time as a ratio.

Builds the real task twice (``precision: auto`` and ``precision: fp32``, same seed) and alternates
their training steps one by one, the order flipping every pair, so a change in the machine's load hits
both alike. ``ratio_auto_to_fp32`` is the median of the per-pair ratios; auto must never be slower, so
it should stay at or below about 1.05 (noise) wherever auto resolves to fp32, and well below 1 where it
picks bf16. Also reports the CPU probe behind the choice. The last stdout line is one JSON object.

    python benchmarks/precision_auto.py --task cyclegan --size 128 --steps 6
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_task, emit, log, pick_device, random_batch, timed  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="cyclegan", choices=["cyclegan", "pix2pix", "cut"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6, help="timed steps of each")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from img2img import precision

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = None
    if device.type == "cpu":
        probe = precision.probe_conv_speed()
        log(f"probe: {probe}")
    tasks = {}
    with tempfile.TemporaryDirectory() as root:
        for name in ("auto", "fp32"):
            tasks[name] = build_task(args.task, size=args.size, batch=args.batch, precision=name,
                                     channels_last=False, compile=False, device=device, data_root=Path(root))
    chosen = tasks["auto"].amp.name
    batch = random_batch(tasks["fp32"], args.size, args.batch)
    times: dict[str, list[float]] = {"auto": [], "fp32": []}
    for name in ("auto", "fp32"):
        log(f"{name} warm-up step: {timed(lambda: tasks[name].train_step(batch), device):.3f} s")
    for i in range(args.steps):
        order = ("auto", "fp32") if i % 2 == 0 else ("fp32", "auto")
        for name in order:
            times[name].append(timed(lambda: tasks[name].train_step(batch), device))
            log(f"{name} step {i + 1}/{args.steps}: {times[name][-1]:.3f} s")
    result = {
        "task": args.task, "size": args.size, "batch": args.batch, "device": str(device),
        "threads": torch.get_num_threads(), "auto_chose": chosen,
        "auto_seconds_per_step": statistics.median(times["auto"]),
        "fp32_seconds_per_step": statistics.median(times["fp32"]),
        "ratio_auto_to_fp32": round(statistics.median(a / f for a, f in zip(times["auto"], times["fp32"])), 3),
        "probe": probe,
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
