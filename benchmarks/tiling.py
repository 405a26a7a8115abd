"""How much tiling changes a translation, and how much memory it saves; prints one JSON object.

Five test images of --size x --size (the photo keeps its aspect ratio): white noise, a fine periodic
texture, a 1/f ("fractal") texture, a synthetic scene (smooth sky, textured ground, flat shapes) and
a real photo (matplotlib's grace_hopper.jpg, upscaled). Each is translated untiled and tiled with
per-tile instance-norm statistics (``local``), with the statistics of the whole image downscaled to
the tile size (``global``), and with ``auto`` (img2img's default: per image, whichever of the two
`choose_tile_norm` finds closer), by a randomly initialised resnet_9blocks (ngf 16, seeded) and by a
tiny resnet_6blocks trained briefly on crops of the photo. Differences from the untiled output are in
0-255 units. Peak memory (RSS high-water mark above the baseline, in a fresh process each) is measured
untiled and tiled at --memory-size x --memory-size (Linux: /proc/self/status VmHWM).

    python benchmarks/tiling.py | tail -n 1       # several minutes on 2 cores
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


def test_images(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """HWC float32 [0, 1] images from the hardest case for downscaled statistics to the easiest."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    fine = 0.5 + 0.25 * np.sin(2 * np.pi * x / 3.3) * np.sin(2 * np.pi * y / 4.1) + 0.15 * rng.random((size, size))
    freq = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    freq[0, 0] = 1.0
    fractal = []
    for _ in range(3):
        spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / freq ** 0.75
        channel = np.real(np.fft.ifft2(spectrum))
        fractal.append((channel - channel.min()) / (channel.max() - channel.min()))
    v, u = y / size, x / size
    scene = np.stack([0.3 + 0.5 * v, 0.5 + 0.3 * v, 0.9 - 0.2 * v], -1)
    grain = rng.random((size, size)) * 0.3
    ground = v > 0.6
    scene[ground] = np.stack([0.3 + grain, 0.5 + grain * 0.5, 0.2 + grain * 0.2], -1)[ground]
    for cu, cv, r, colour in ((0.3, 0.3, 0.1, (0.9, 0.2, 0.1)), (0.7, 0.4, 0.15, (0.1, 0.1, 0.8))):
        scene[(u - cu) ** 2 + (v - cv) ** 2 < r * r] = colour
    images = {
        "white_noise": rng.random((size, size, 3), dtype=np.float32),
        "fine_texture": np.stack([fine, fine * 0.8 + 0.1, 1 - fine], -1),
        "fractal_texture": np.stack(fractal, -1),
        "scene": scene,
        "photo": photo(size),
    }
    return {k: np.clip(v, 0, 1).astype(np.float32) for k, v in images.items()}


def differences(make_translator, image: np.ndarray, tile: int, overlap: int) -> dict:
    """mean / p99 / max |tiled - untiled| in 0-255 units for local, global and auto statistics, and
    the mode auto chose."""
    from img2img.inference.tiling import choose_tile_norm

    untiled = make_translator().translate_arrays([image])[0]
    out = {}
    for mode in ("local", "global", "auto"):
        start = time.perf_counter()
        tiled = make_translator(tile=tile, overlap=overlap, tile_norm=mode).translate_arrays([image])[0]
        diff = np.abs(tiled - untiled) * 255.0
        out[mode] = {"mean": round(float(diff.mean()), 2), "p99": round(float(np.percentile(diff, 99)), 1),
                     "max": round(float(diff.max()), 1), "seconds": round(time.perf_counter() - start, 2)}
    translator = make_translator(tile=tile, overlap=overlap)
    backend = translator.backend
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None] * 2 - 1
    out["auto_chose"] = choose_tile_norm(backend.module, tensor, tile=effective(tile, backend.size_multiple),
                                         overlap=overlap, multiple=backend.size_multiple,
                                         stats_size=effective(tile, backend.size_multiple))
    return out


def effective(tile: int, multiple: int) -> int:
    from img2img.inference.tiling import effective_tile

    return effective_tile(tile, multiple)


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
    parser.add_argument("--size", type=int, default=1024, help="side of the test images (the photo's longer side)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--small-tile", type=int, default=256, help="a second, harder tiling")
    parser.add_argument("--small-overlap", type=int, default=32)
    parser.add_argument("--memory-size", type=int, default=2048)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--images", default="white_noise,fine_texture,fractal_texture,scene,photo",
                        help="comma list of test images")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--memory-child", choices=("tiled", "untiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.memory_size, args.tile, args.overlap)
        return

    from img2img.inference.translator import Translator

    torch.set_num_threads(2)
    wanted = [name.strip() for name in args.images.split(",") if name.strip()]
    images = {k: v for k, v in test_images(args.size).items() if k in wanted}
    result: dict = {"size": args.size, "units": "0-255", "torch": torch.__version__,
                    "images": {k: list(v.shape[:2]) for k, v in images.items()}}
    tilings = {f"tile{args.tile}_overlap{args.overlap}": (args.tile, args.overlap),
               f"tile{args.small_tile}_overlap{args.small_overlap}": (args.small_tile, args.small_overlap)}

    def measure(make) -> dict:
        out = {}
        for image_name, image in images.items():
            for name, (t, o) in tilings.items():
                out.setdefault(image_name, {})[name] = found = differences(make, image, t, o)
                log(f"{image_name} {name}: " + ", ".join(f"{m} {found[m]['mean']}" for m in ("local", "global", "auto"))
                    + f" (auto chose {found['auto_chose']})")
        return out

    net = random_generator()
    log("random resnet_9blocks ngf 16")
    result["random_resnet_9blocks_ngf16"] = measure(lambda **o: Translator.from_module(net, device="cpu", **o))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = trained_run(Path(tmp), args.train_steps)
        log(f"trained resnet_6blocks ngf 8 ({args.train_steps} steps)")
        trained = {"train_steps": args.train_steps, "train_seconds": round(time.perf_counter() - start, 1)}
        trained |= measure(lambda **opt: Translator.from_run(run, device="cpu", **opt))
        result["trained_resnet_6blocks_ngf8"] = trained

    if not args.no_memory:
        result[f"memory_{args.memory_size}"] = {
            "model": "resnet_9blocks ngf 16, fp32, cpu",
            "untiled": peak_memory("untiled", args.memory_size, args.tile, args.overlap),
            f"tiled_{args.tile}_{args.overlap}": peak_memory("tiled", args.memory_size, args.tile, args.overlap),
        }
    print(json.dumps(result), flush=True)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
