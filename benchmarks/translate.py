"""Images per second of `img2img translate` with the torch backend and with the exported ONNX file.

Builds a run folder holding a resnet_9blocks (ngf 64) CycleGAN checkpoint (the training loop's own
`Trainer.state()`, no training needed for speed), exports its a2b generator with `img2img export`,
then translates a folder of 256x256 PNGs through `translate_inputs` with each backend, alternating
the backends `--rounds` times and keeping each one's best round. The translate command's figure
covers decoding, the model and encoding (I/O runs in threads beside the model), not model loading.
It also times the generator's forward pass alone on one 1x3xSxS input, torch eager against the
onnxruntime session `img2img translate` opens, alternating the two `--forward-runs` times with a
short pause between them (onnxruntime's threads spin for a moment after a run, which would slow a
torch pass started at once). `forward.speedup` is the median of the per-pair ratios: the steadier
figure on a shared machine, and the ceiling for the whole command's speed-up.

With `--nproc N` it measures something else: the `img2img translate` command itself, run as a
subprocess on 1 process and on N (`--nproc N`, torchrun on this machine), alternating `--rounds`
times, each run's images/s as its summary line states it (the slowest rank's translation time, not
the start-up), and whether the two output folders are identical byte for byte.

The last stdout line is one JSON object; progress goes to stderr.

    python benchmarks/translate.py --images 16 --rounds 3 --forward-runs 12
    python benchmarks/translate.py --torch-precision bf16     # adds {"torch_bf16": {"images_per_s": ...}}
    python benchmarks/translate.py --nproc 2 --images 64       # {"processes": {"1": ..., "2": ...}, ...}
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log, peak_rss_mb  # noqa: E402


def write_inputs(folder: Path, count: int, size: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")


def make_run(root: Path, size: int, ngf: int) -> Path:
    """A run folder with `checkpoints/last.pt` of an untrained resnet_9blocks CycleGAN."""
    from rich.console import Console

    from img2img.engine import checkpoint as ckpt_io
    from img2img.config import validate_pipeline
    from img2img.engine.train import RunFolder, Trainer

    data = root / "data"
    write_inputs(data / "a", 2, size, seed=1)
    write_inputs(data / "b", 2, size, seed=2)
    pipeline = validate_pipeline({
        "task": "cyclegan", "name": "bench",
        "data": {"a": str(data / "a"), "b": str(data / "b"), "num_workers": 0},
        "model": {"generator": {"name": "resnet_9blocks", "ngf": ngf}, "discriminator": {"name": "patchgan"}},
        "train": {"max_steps": 1, "device": "cpu"},
    })
    run = RunFolder(root / "run")
    trainer = Trainer(pipeline, run, console=Console(stderr=True))
    ckpt_io.atomic_save(trainer.state(), run.last)
    return run.root


def forward_pair(run: Path, onnx_file: Path, size: int, runs: int, device: str) -> dict:
    """Seconds of one forward pass, torch eager vs onnxruntime, alternating with pauses between."""
    from img2img.inference.translator import Translator

    torch_model = Translator.load(run, device=device).backend
    onnx_model = Translator.load(onnx_file, device=device).backend
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    times: dict[str, list[float]] = {"torch": [], "onnx": []}
    for model in (torch_model, onnx_model):
        model(x)  # warm-up: allocations, oneDNN primitives, onnxruntime's arena
    for i in range(runs):
        order = ("torch", "onnx") if i % 2 == 0 else ("onnx", "torch")
        for name in order:
            time.sleep(0.2)
            start = time.perf_counter()
            (torch_model if name == "torch" else onnx_model)(x)
            times[name].append(time.perf_counter() - start)
    ratios = [t / o for t, o in zip(times["torch"], times["onnx"])]
    return {
        "torch_seconds": round(statistics.median(times["torch"]), 4),
        "onnx_seconds": round(statistics.median(times["onnx"]), 4),
        "speedup": round(statistics.median(ratios), 3),
        "runs": runs,
    }


def translate_command(inputs: Path, run: Path, out: Path, nproc: int, args: argparse.Namespace) -> dict:
    """One `img2img translate` as a user runs it; its summary's images/s and the wall time."""
    command = [sys.executable, "-m", "img2img", "translate", str(inputs), "--model", str(run), "--out", str(out),
               "--device", args.device, "--batch-size", str(args.batch_size), "--overwrite"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**env, "COLUMNS": "300"})
    wall = time.perf_counter() - start
    text = " ".join(proc.stdout.split())
    found = re.search(r"translated (\d+) images? in [\d.]+ s \(([\d.]+) images/s\)", text)
    if proc.returncode != 0 or found is None or int(found.group(1)) != args.images:
        raise SystemExit(f"{nproc} process(es): exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return {"images_per_s": float(found.group(2)), "wall_s": wall}


def compare_processes(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log("building a run folder")
        run = make_run(root, args.size, args.ngf)
        inputs = root / "inputs"
        write_inputs(inputs, args.images, args.size)
        best: dict[int, dict] = {}
        for r in range(args.rounds):
            for nproc in ((1, args.nproc) if r % 2 == 0 else (args.nproc, 1)):
                result = translate_command(inputs, run, root / f"out-{nproc}", nproc, args)
                log(f"round {r + 1}, {nproc} process(es): {result['images_per_s']:.3f} images/s, "
                    f"{result['wall_s']:.1f} s with start-up")
                if result["images_per_s"] > best.get(nproc, {"images_per_s": 0.0})["images_per_s"]:
                    best[nproc] = result
        identical = all((root / "out-1" / p.name).read_bytes() == p.read_bytes()
                        for p in (root / f"out-{args.nproc}").iterdir())
    result = {
        "processes": {str(n): {"images_per_s": round(best[n]["images_per_s"], 3), "wall_s": round(best[n]["wall_s"], 1)}
                      for n in (1, args.nproc)},
        "speedup": round(best[args.nproc]["images_per_s"] / best[1]["images_per_s"], 3),
        "identical_outputs": identical,
        "images": args.images, "size": args.size, "ngf": args.ngf, "batch_size": args.batch_size,
        "rounds": args.rounds, "device": args.device, "cpus": os.cpu_count(),
    }
    emit(result)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two backends; best round kept")
    ap.add_argument("--forward-runs", type=int, default=12, help="alternating forward passes of each backend")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--torch-precision", action="append", default=[], choices=["bf16", "fp16"],
                    help="also translate with the torch model at this precision (repeatable), e.g. bf16")
    ap.add_argument("--nproc", type=int, default=None,
                    help="instead: the translate command on 1 and on N processes (torchrun), side by side")
    args = ap.parse_args(argv)
    if args.nproc is not None:
        if args.nproc < 2:
            raise SystemExit("--nproc: give 2 or more processes to compare with 1")
        return compare_processes(args)

    try:
        from img2img.inference.export import export
        from img2img.inference.translator import translate_inputs
    except ImportError as exc:
        raise SystemExit(f"img2img.translate / img2img.export are not importable here: {exc}") from None
    from rich.console import Console

    quiet = Console(stderr=True, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log("building a run folder and exporting its a2b generator")
        run = make_run(root, args.size, args.ngf)
        onnx_file = root / "g.onnx"
        start = time.perf_counter()
        export(run, onnx_file, console=quiet)
        export_seconds = time.perf_counter() - start
        inputs = root / "inputs"
        write_inputs(inputs, args.images, args.size)

        best: dict[str, float] = {}
        backends = ["torch", "onnx"] + [f"torch_{p}" for p in args.torch_precision]
        for r in range(args.rounds):
            order = backends if r % 2 == 0 else backends[::-1]
            for backend in order:
                model = onnx_file if backend == "onnx" else run
                precision = backend.split("_", 1)[1] if backend.startswith("torch_") else "fp32"
                report = translate_inputs([inputs], model=model, out=root / f"out-{backend}", device=args.device,
                                          precision=precision, batch_size=args.batch_size, overwrite=True,
                                          console=quiet)
                if len(report.written) != args.images:
                    raise SystemExit(f"{backend}: translated {len(report.written)} of {args.images} images: "
                                     f"{report.failed[:3]}")
                log(f"round {r + 1} {backend}: {report.images_per_s:.3f} images/s")
                best[backend] = max(best.get(backend, 0.0), report.images_per_s)
        forward = None
        if args.forward_runs > 0:
            log(f"timing {args.forward_runs} alternating forward passes of each backend")
            forward = forward_pair(run, onnx_file, args.size, args.forward_runs, args.device)
            log(f"forward: torch {forward['torch_seconds']:.3f} s, onnx {forward['onnx_seconds']:.3f} s, "
                f"speed-up {forward['speedup']:.3f}")

    result = {
        "torch": {"images_per_s": round(best["torch"], 3)},
        "onnx": {"images_per_s": round(best["onnx"], 3)},
        **{name: {"images_per_s": round(best[name], 3)} for name in backends[2:]},
        "onnx_speedup": round(best["onnx"] / best["torch"], 3),
        "forward": forward,
        "images": args.images, "size": args.size, "ngf": args.ngf, "batch_size": args.batch_size,
        "rounds": args.rounds, "device": args.device, "threads": torch.get_num_threads(),
        "export_seconds": round(export_seconds, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
