"""Images per second of `img2img translate` on every backend and precision this machine offers, each
with its difference from torch fp32, in one run.

For each model (`--models`: ``demo`` is the demo pipeline's resnet_6blocks ngf 16 on 64x64 images,
``256`` a resnet_9blocks ngf 64 on 256x256) it builds a run folder holding an untrained CycleGAN
checkpoint (the training loop's own `Trainer.state()`; speed needs no training), exports its a2b
generator to float32 ONNX and to int8 ONNX (``--int8``, calibrated on other images of the same kind),
then translates a folder of PNGs through `translate_inputs` (the `img2img translate` command, decoding
and encoding included, model loading not) along every path:

    torch_fp32 (the yardstick), torch_bf16 (where the CPU has bf16), onnxruntime_fp32,
    onnxruntime_int8, openvino_fp32, openvino_bf16 (where the CPU has it), openvino_int8

The paths alternate `--rounds` times and keep their best round (the machine may be shared). Each
entry is ``{"images_per_s", "ratio" (to torch_fp32), "mean_diff", "max_diff" (1/255 steps of the
written 8-bit images against torch_fp32's), "agrees"}``, agreement as `--backend auto` judges it
(`img2img.inference.auto.AGREEMENT`); ``fastest_agreeing`` names the best path and its ratio.
`--forward-runs` N adds the older forward-pass comparison of torch and onnxruntime alone.

The last stdout line is one JSON object; progress goes to stderr.

    python benchmarks/translate.py                        # both models, every path
    python benchmarks/translate.py --models 256 --images 8 --rounds 2
    python benchmarks/translate.py --size 32 --ngf 8 --images 3      # one tiny model ("custom")
"""
from __future__ import annotations

import argparse
import statistics
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


def make_run(root: Path, size: int, ngf: int, generator: str = "resnet_9blocks") -> Path:
    """A run folder with `checkpoints/last.pt` of an untrained CycleGAN (`generator`, `ngf`)."""
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
        "model": {"generator": {"name": generator, "ngf": ngf}, "discriminator": {"name": "patchgan"}},
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


MODELS = {"demo": ("resnet_6blocks", 16, 64, 64), "256": ("resnet_9blocks", 64, 256, 16)}
"""name: (generator, ngf, image size, default image count)."""


def read_outputs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))}


def paths_for(run: Path, onnx_file: Path, int8_file: Path | None) -> dict[str, tuple[Path, str, str]]:
    """name: (model, backend, precision) of every path this machine can run."""
    from img2img.inference.choice import _torch_bf16_native

    paths = {"torch_fp32": (run, "torch", "fp32")}
    if _torch_bf16_native():
        paths["torch_bf16"] = (run, "torch", "bf16")
    paths["onnxruntime_fp32"] = (onnx_file, "onnxruntime", "fp32")
    if int8_file is not None:
        paths["onnxruntime_int8"] = (int8_file, "onnxruntime", "fp32")
    try:
        from img2img.inference import openvino as ov

        bf16 = ov.bf16_supported()
    except Exception as exc:  # not installed: the other paths still run
        log(f"OpenVINO paths left out: {exc}")
        return paths
    paths["openvino_fp32"] = (run, "openvino", "fp32")
    if bf16:
        paths["openvino_bf16"] = (run, "openvino", "bf16")
    if int8_file is not None:
        paths["openvino_int8"] = (int8_file, "openvino", "fp32")
    return paths


def bench_model(root: Path, name: str, args) -> dict:
    from rich.console import Console

    from img2img.inference.auto import AGREEMENT
    from img2img.inference.export import export
    from img2img.inference.translator import Translator

    generator, ngf, size, count = MODELS.get(name) or (args.generator, args.ngf, args.size, 8)
    images = args.images or count
    quiet = Console(stderr=True, quiet=True)
    log(f"{name}: building a {generator} (ngf {ngf}) run, exporting it, {images} PNGs of {size}x{size}")
    run = make_run(root, size, ngf, generator)
    onnx_file = root / "g.onnx"
    export(run, onnx_file, console=quiet)
    int8_file = None
    if args.int8:
        write_inputs(root / "calibration", 16, size, seed=7)
        int8_file = root / "g-int8.onnx"
        export(run, int8_file, int8=True, calibrate=root / "calibration", force=True, console=Console(stderr=True))
    inputs = root / "inputs"
    write_inputs(inputs, images, size)
    paths = paths_for(run, onnx_file, int8_file)
    translators = {}
    for key, (model, backend, precision) in paths.items():  # loaded once: the rounds time translation only
        translators[key] = Translator.load(model, device=args.device, precision=precision, backend=backend,
                                           batch_size=args.batch_size)
    best: dict[str, float] = {}
    keys = list(paths)
    for r in range(args.rounds):
        for key in (keys if r % 2 == 0 else keys[::-1]):
            report = translators[key].translate_folder(inputs, root / f"out-{key}", overwrite=True, console=quiet)
            if len(report.written) != images:
                raise SystemExit(f"{key}: translated {len(report.written)} of {images} images: {report.failed[:3]}")
            log(f"{name} round {r + 1} {key}: {report.images_per_s:.3f} images/s")
            best[key] = max(best.get(key, 0.0), report.images_per_s)
    reference = read_outputs(root / "out-torch_fp32")
    rows: dict[str, dict] = {}
    for key in keys:
        outputs = read_outputs(root / f"out-{key}")
        diffs = [np.abs(outputs[n] - reference[n]) for n in reference]
        mean = float(np.mean([d.mean() for d in diffs]))
        worst = float(max(d.max() for d in diffs))
        arithmetic = key.rsplit("_", 1)[1]
        mean_limit, max_limit = AGREEMENT[arithmetic]
        rows[key] = {"images_per_s": round(best[key], 3), "ratio": round(best[key] / best["torch_fp32"], 3),
                     "mean_diff": round(mean, 3), "max_diff": round(worst, 1),
                     "agrees": mean <= mean_limit and (max_limit is None or worst <= max_limit),
                     "runs_on": translators[key].describe()}
    agreeing = [k for k, row in rows.items() if row["agrees"]]
    fastest = max(agreeing, key=lambda k: rows[k]["images_per_s"])
    result = {"paths": rows, "fastest_agreeing": {"path": fastest, "ratio": rows[fastest]["ratio"]},
              "generator": generator, "ngf": ngf, "size": size, "images": images}
    if args.forward_runs > 0:
        result["forward"] = forward_pair(run, onnx_file, size, args.forward_runs, args.device)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,256", help="comma-separated: demo, 256")
    ap.add_argument("--images", type=int, default=0, help="PNGs per model (default: 64 demo, 16 at 256)")
    ap.add_argument("--size", type=int, default=None, help="instead of --models: one model on SxS images")
    ap.add_argument("--ngf", type=int, default=64, help="with --size: the generator's width")
    ap.add_argument("--generator", default="resnet_9blocks", help="with --size: the generator")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the paths; best round kept")
    ap.add_argument("--forward-runs", type=int, default=0, help="alternating torch/onnxruntime forward passes")
    ap.add_argument("--no-int8", dest="int8", action="store_false", help="leave out the int8 paths")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    result: dict = {}
    for name in (args.models.split(",") if args.size is None else ["custom"]):
        if name not in MODELS and name != "custom":
            raise SystemExit(f"--models {name!r}: choose among {', '.join(MODELS)}")
        with tempfile.TemporaryDirectory() as tmp:
            result[name] = bench_model(Path(tmp), name, args)
    result.update({"cpu": _cpu_name(), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                   "rounds": args.rounds, "device": args.device, "target_ratio": 1.8,
                   "peak_rss_mb": round(peak_rss_mb(), 1)})
    emit(result)
    return result


def _cpu_name() -> str:
    from img2img.precision import _cpu_name as name

    return name()


if __name__ == "__main__":
    main()
