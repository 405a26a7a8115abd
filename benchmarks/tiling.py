"""How much tiling changes a translation, and how much memory it saves; prints one JSON object.

A real photo (matplotlib's grace_hopper.jpg, upscaled to --size on its longer side) is translated
untiled, tiled with per-tile instance-norm statistics (``local``) and tiled with the statistics of
a downscaled whole image (``global``, the default; also with those statistics at twice the tile size), by a randomly initialised resnet_9blocks
(ngf 16, seeded) and by a tiny resnet_6blocks trained briefly on crops of the photo. Differences are
in 0-255 units. Peak memory (RSS high-water mark above the baseline, in a fresh process each) is
measured untiled and tiled at --memory-size x --memory-size (Linux: /proc/self/status VmHWM).

    python benchmarks/tiling.py            # several minutes on 2 cores
"""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def photo(longer: int) -> np.ndarray:
    """grace_hopper.jpg as HWC float32 [0, 1], resized so its longer side is `longer`."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        im = Image.open(fh).convert("RGB")
    w, h = im.size
    scale = longer / max(w, h)
    im = im.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    return np.asarray(im, dtype=np.float32) / 255.0


def random_generator(seed: int = 0):
    from img2img.default_plugins.resnet import resnet_9blocks

    torch.manual_seed(seed)
    return resnet_9blocks(3, 3, ngf=16).eval()


def trained_run(folder: Path, steps: int) -> Path:
    """A tiny cyclegan trained on 64 px crops of the photo (A) and of its warm-toned version (B)."""
    from PIL import Image
    from rich.console import Console

    from img2img.engine.train import train

    base = photo(512)
    rng = np.random.default_rng(0)
    for domain in ("a", "b"):
        (folder / domain).mkdir(parents=True)
    for i in range(24):
        y, x = rng.integers(0, base.shape[0] - 96), rng.integers(0, base.shape[1] - 96)
        crop = base[y:y + 96, x:x + 96]
        warm = np.clip(crop * np.array([1.15, 0.95, 0.7], dtype=np.float32) + 0.05, 0, 1)
        Image.fromarray((crop * 255).round().astype(np.uint8)).save(folder / "a" / f"{i}.png")
        Image.fromarray((warm * 255).round().astype(np.uint8)).save(folder / "b" / f"{i}.png")
    pipeline = folder / "pipeline.yaml"
    pipeline.write_text(f"""\
task: cyclegan
name: tiling-bench
seed: 0
data:
  a: {folder / 'a'}
  b: {folder / 'b'}
  num_workers: 0
  transforms:
    - RandomCrop: {{height: 64, width: 64}}
    - HorizontalFlip: {{p: 0.5}}
model:
  generator: {{name: resnet_6blocks, ngf: 8}}
  discriminator: {{name: patchgan, ndf: 8, n_layers: 2}}
train:
  max_steps: {steps}
  batch_size: 4
  lr: 0.001
  sample_every: {steps}
  checkpoint_every: {steps}
""")
    train(pipeline, out=folder / "run", console=Console(file=io.StringIO()))
    return folder / "run"


def differences(make_translator, image: np.ndarray, tile: int, overlap: int) -> dict:
    """max/mean |tiled - untiled| in 0-255 units: local statistics, global ones at the tile size and at 2x."""
    untiled = make_translator().translate_arrays([image])[0]
    out = {}
    variants = {"local": {"tile_norm": "local"}, "global": {"tile_norm": "global"},
                f"global_stats{2 * tile}": {"tile_norm": "global", "stats_size": 2 * tile}}
    for name, options in variants.items():
        start = time.perf_counter()
        tiled = make_translator(tile=tile, overlap=overlap, **options).translate_arrays([image])[0]
        diff = np.abs(tiled - untiled) * 255.0
        out[name] = {"max": round(float(diff.max()), 2), "mean": round(float(diff.mean()), 3),
                     "p99": round(float(np.percentile(diff, 99)), 2),
                     "seconds": round(time.perf_counter() - start, 2)}
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(mode: str, size: int, tile: int, overlap: int) -> None:
    """Runs in a fresh process: prints the RSS high-water mark added by one translation (MiB)."""
    from img2img.inference.translator import Translator

    torch.set_num_threads(2)
    image = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    options = {"tile": tile, "overlap": overlap} if mode == "tiled" else {}
    translator = Translator.from_module(random_generator(), device="cpu", **options)
    translator.translate_arrays([np.zeros((64, 64, 3), np.float32)])  # warm up the kernels
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM) to the current RSS
    start = time.perf_counter()
    translator.translate_arrays([image])
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": round((peak - before) / 1024, 1), "seconds": round(seconds, 2)}))


def peak_memory(mode: str, size: int, tile: int, overlap: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", mode, "--memory-size", str(size), "--tile", str(tile),
           "--overlap", str(overlap)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="longer side of the photo")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--small-tile", type=int, default=256, help="a second, harder tiling")
    parser.add_argument("--small-overlap", type=int, default=32)
    parser.add_argument("--memory-size", type=int, default=2048)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--memory-child", choices=("tiled", "untiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.memory_size, args.tile, args.overlap)
        return

    from img2img.inference.translator import Translator

    torch.set_num_threads(2)
    image = photo(args.size)
    result: dict = {"photo": "matplotlib grace_hopper.jpg", "height": image.shape[0], "width": image.shape[1],
                    "units": "0-255", "torch": torch.__version__}
    tilings = {f"tile{args.tile}_overlap{args.overlap}": (args.tile, args.overlap),
               f"tile{args.small_tile}_overlap{args.small_overlap}": (args.small_tile, args.small_overlap)}

    net = random_generator()
    result["random_resnet_9blocks_ngf16"] = {
        name: differences(lambda **o: Translator.from_module(net, device="cpu", **o), image, t, o)
        for name, (t, o) in tilings.items()}

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = trained_run(Path(tmp), args.train_steps)
        trained = {"train_steps": args.train_steps, "train_seconds": round(time.perf_counter() - start, 1)}
        for name, (t, o) in tilings.items():
            trained[name] = differences(lambda **opt: Translator.from_run(run, device="cpu", **opt), image, t, o)
        result["trained_resnet_6blocks_ngf8"] = trained

    result[f"memory_{args.memory_size}"] = {
        "model": "resnet_9blocks ngf 16, fp32, cpu",
        "untiled": peak_memory("untiled", args.memory_size, args.tile, args.overlap),
        f"tiled_{args.tile}_{args.overlap}": peak_memory("tiled", args.memory_size, args.tile, args.overlap),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
