"""What training health costs: training throughput with ``train.health: warn`` over ``off``.

Trains the same pipeline (the reference recipe of the task, at the size and width given) with the
real training loop, health off and on, in the same process: rounds alternate the order (off, on /
on, off) so a change in the machine's load hits both alike. Each fit is timed whole (data loading,
steps, logging, the final checkpoint), so the ratio is what a user sees; on a shared machine the
ratio of the process's CPU time is the steadier number (with ``--device cpu``). It also times one
health measurement on its own (the extra forward pass on the fixed sample batch) and one log row's
work, and models the overhead from them.

The last stdout line is one JSON object; progress goes to stderr.

    python benchmarks/health.py --task cyclegan --size 64 --ngf 16 --steps 100 --rounds 3
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log, pick_device, pipeline_dict  # noqa: E402


def write_images(folder: Path, count: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def make_trainer(raw: dict, run: Path, device: torch.device):
    from rich.console import Console

    from img2img.config import validate_pipeline
    from img2img.engine.train import RunFolder, Trainer, prepare_run_folder

    pipeline = validate_pipeline(raw)
    folder = prepare_run_folder(run, resume=False, overwrite=True)
    return Trainer(pipeline, RunFolder(folder.root), device=device, console=Console(file=io.StringIO()))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="cyclegan", choices=["cyclegan", "pix2pix", "cut"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ngf", type=int, default=16, help="generator width (the discriminator's ndf too)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100, help="training steps per timed fit")
    ap.add_argument("--rounds", type=int, default=3, help="timed fits of each mode, alternating")
    ap.add_argument("--log-every", type=int, default=10, help="train.log_every (health reads every log row)")
    ap.add_argument("--every", type=int, default=None, help="train.health_thresholds.every (default: its default)")
    ap.add_argument("--samples", type=int, default=4, help="train.samples: the fixed batch health measures on")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root / "a", 8, args.size, 1)
        write_images(root / "b", 8, args.size, 2)
        raw = pipeline_dict(args.task, args.size, args.batch, "fp32", False, False, root)
        raw["model"]["generator"]["ngf"] = args.ngf
        raw["model"]["discriminator"]["ndf"] = args.ngf
        raw["data"]["num_workers"] = 0
        raw["data"]["transforms"] = []
        raw["train"].update({"max_steps": args.steps, "log_every": args.log_every, "samples": args.samples,
                             "sample_every": 10**9, "checkpoint_every": 10**9, "device": str(device)})
        if args.every:
            raw["train"]["health_thresholds"] = {"every": args.every}

        seconds: dict[str, list[float]] = {"off": [], "warn": []}
        cpu: dict[str, list[float]] = {"off": [], "warn": []}
        log(f"warm-up fit ({args.steps} steps, health off)")
        make_trainer({**raw, "train": {**raw["train"], "health": "off"}}, root / "run", device).fit()
        for r in range(args.rounds):
            order = ("off", "warn") if r % 2 == 0 else ("warn", "off")
            for mode in order:
                trainer = make_trainer({**raw, "train": {**raw["train"], "health": mode}}, root / "run", device)
                start, start_cpu = time.perf_counter(), time.process_time()
                trainer.fit()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[mode].append(time.perf_counter() - start)
                cpu[mode].append(time.process_time() - start_cpu)
                log(f"round {r + 1}/{args.rounds} health {mode}: {seconds[mode][-1]:.2f} s ({cpu[mode][-1]:.2f} s CPU)")

        # one measurement and one log row's work, timed on their own (the last trainer is warm)
        from img2img.engine.health import gradient_norms, probe

        trainer = make_trainer({**raw, "train": {**raw["train"], "health": "warn"}}, root / "run", device)
        trainer.fit()
        batch = trainer.data.fixed_batch(args.samples)
        probe_s = statistics.median(_timed(lambda: probe(trainer.task, batch), device) for _ in range(5))
        grad_s = statistics.median(_timed(lambda: gradient_norms(trainer.task), device) for _ in range(5))
        every = trainer.health.thresholds.every

    images = args.steps * args.batch
    off, on = statistics.median(seconds["off"]), statistics.median(seconds["warn"])
    result = {
        "throughput_on_over_off": round(off / on, 4),  # images/s with health on / with it off
        "pairwise_ratio_median": round(statistics.median(o / w for o, w in zip(seconds["off"], seconds["warn"])), 4),
        "images_per_s_off": round(images / off, 3),
        "images_per_s_on": round(images / on, 3),
        "seconds_off": [round(s, 3) for s in seconds["off"]],
        "seconds_on": [round(s, 3) for s in seconds["warn"]],
        # CPU time of this process: on a shared machine, other processes' load barely moves it
        "cpu_throughput_on_over_off": round(statistics.median(cpu["off"]) / statistics.median(cpu["warn"]), 4),
        "cpu_seconds_off": [round(s, 3) for s in cpu["off"]],
        "cpu_seconds_on": [round(s, 3) for s in cpu["warn"]],
        "probe_ms": round(probe_s * 1000, 2),
        "grad_norms_ms": round(grad_s * 1000, 3),
        "step_ms": round(off / args.steps * 1000, 2),
        # a measurement on the first log row at least `every` steps after the last one
        "modelled_overhead": round((probe_s / (-(-every // args.log_every) * args.log_every) + grad_s / args.log_every)
                                   / (off / args.steps), 4),
        "task": args.task, "size": args.size, "ngf": args.ngf, "batch": args.batch, "steps": args.steps,
        "rounds": args.rounds, "log_every": args.log_every, "every": every, "samples": args.samples,
        "threads": torch.get_num_threads(), "device": str(device),
    }
    emit(result)
    return result


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
