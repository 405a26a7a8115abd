"""Images per second the training data pipeline delivers, and how that compares with a step's demand.

Writes JPEGs of 400x400 into a temporary folder (half domain A, half domain B), runs the real
`TrainData` with the horse2zebra augmentation (Resize 286, RandomCrop 256, HorizontalFlip),
unpaired, and times `--batches` batches after a warm-up. `ratio_to_step_demand` is the images per
second delivered over the images per second a CycleGAN fp32 training step consumes (`--step-seconds`,
or timed here on one 256 px step); the loader keeps up while it is comfortably above 1.
The last stdout line is one JSON object; progress goes to stderr.

    python benchmarks/dataloader.py --workers 1 --batches 64
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_task, emit, log, peak_rss_mb, random_batch, timed  # noqa: E402

HORSE2ZEBRA = [{"Resize": {"height": 286, "width": 286}}, {"RandomCrop": {"height": 256, "width": 256}},
               {"HorizontalFlip": {"p": 0.5}}]


def write_photos(folder: Path, count: int, size: int, seed: int) -> None:
    """Photo-like JPEGs: smooth colour fields with fine grain, so the decoder does realistic work."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
        grain = rng.normal(0, 12, (size, size, 3))
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)


def step_seconds(device: torch.device) -> float:
    """Seconds of one fp32 CycleGAN training step at 256 px, batch 1 (after one warm-up step)."""
    with tempfile.TemporaryDirectory() as root:
        task = build_task("cyclegan", size=256, batch=1, precision="fp32", channels_last=False, compile=False,
                          device=device, data_root=Path(root))
    batch = random_batch(task, 256, 1)
    log("timing one fp32 cyclegan step at 256 px for the step's demand (use --step-seconds to skip)")
    timed(lambda: task.train_step(batch), device)
    return timed(lambda: task.train_step(batch), device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="JPEG files written (half A, half B)")
    ap.add_argument("--image-size", type=int, default=400)
    ap.add_argument("--workers", type=int, default=1, help="data.num_workers")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--batches", type=int, default=64, help="timed batches")
    ap.add_argument("--warmup", type=int, default=4, help="untimed batches first (worker start-up)")
    ap.add_argument("--step-seconds", type=float, default=None,
                    help="seconds of the training step to compare with; timed here when not given")
    ap.add_argument("--no-step", action="store_true", help="report the loader only")
    args = ap.parse_args(argv)

    from img2img.data import TrainData

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log(f"writing {args.images} JPEGs of {args.image_size}x{args.image_size}")
        write_photos(root / "a", args.images // 2, args.image_size, seed=1)
        write_photos(root / "b", args.images - args.images // 2, args.image_size, seed=2)
        data = TrainData(kind="unpaired", a=root / "a", b=root / "b", transforms=HORSE2ZEBRA, seed=0,
                         batch_size=args.batch, num_workers=args.workers)
        data.check()

        def batches():
            epoch = 0
            while True:
                yield from data.epoch(epoch)
                epoch += 1

        stream = batches()
        for _ in range(args.warmup):
            next(stream)
        start = time.perf_counter()
        for _ in range(args.batches):
            batch = next(stream)
        seconds = time.perf_counter() - start
        shape = list(batch["a"].shape)
        data.close()

    images_per_s = args.batches * args.batch / seconds
    result = {"images_per_s": round(images_per_s, 2), "workers": args.workers, "batch": args.batch,
              "batches": args.batches, "seconds": round(seconds, 3), "batch_shape": shape,
              "source_size": args.image_size, "files": args.images, "transforms": "horse2zebra",
              "threads": torch.get_num_threads(), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if not args.no_step:
        step = args.step_seconds if args.step_seconds is not None else step_seconds(torch.device("cpu"))
        demand = args.batch / step
        result |= {"step_seconds": round(step, 3), "step_images_per_s": round(demand, 4),
                   "ratio_to_step_demand": round(images_per_s / demand, 1)}
    emit(result)
    return result


if __name__ == "__main__":
    main()
