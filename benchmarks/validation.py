"""What a validation during training costs, in training steps of the same run; prints one JSON object.

A real `Trainer` (cyclegan, the demo recipe by default: resnet_6blocks ngf 16 at 64 px, batch 4) is
built on random images; its training step and one `Validator.run()` per extractor (kid: translate
--images validation images, features, 100 KID subsets) are timed in the same process, so the
ratio ``validation_in_steps`` does not depend on the machine. It says how often `train.val_every`
can validate for a given share of the training time. ``reference_seconds`` is the one-time cost of
the real images' features when training starts. inception_v3 runs with randomly initialised
weights (same arithmetic as the real ones; nothing is downloaded).

    python benchmarks/validation.py                          # about a minute on 2 cores
    python benchmarks/validation.py --size 256 --ngf 64 --images 200 --device cuda
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log, pick_device, synchronize, timed  # noqa: E402


def write_images(folder: Path, count: int, size: int, seed: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=50, help="validation images (data.val.a and data.val.b)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="timed validations per extractor")
    parser.add_argument("--extractors", default="random_conv,inception_v3")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    from rich.console import Console

    from img2img.config import validate_pipeline
    from img2img.config.schema import ExtractorSpec
    from img2img.engine.train import RunFolder, Trainer
    from img2img.engine.validation import Validator

    result = {"device": str(device), "size": args.size, "ngf": args.ngf, "batch": args.batch, "images": args.images}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, seed in (("a", 1), ("b", 2), ("val_a", 3), ("val_b", 4)):
            write_images(root / name, max(args.images if name.startswith("val") else 2 * args.batch, 2), args.size,
                         seed)
        raw = {"task": "cyclegan", "name": "bench-validation",
               "data": {"a": str(root / "a"), "b": str(root / "b"), "num_workers": 0,
                        "val": {"a": str(root / "val_a"), "b": str(root / "val_b")}},
               "model": {"generator": {"name": "resnet_6blocks", "ngf": args.ngf},
                         "discriminator": {"name": "patchgan", "ndf": args.ngf, "n_layers": 3}},
               "train": {"batch_size": args.batch, "val_metric": "kid", "device": str(device)}}
        console = Console(file=io.StringIO())
        trainer = Trainer(validate_pipeline(raw), RunFolder(root / "run"), device=device, console=console)
        (root / "run" / "checkpoints").mkdir(parents=True)
        batch = next(iter(trainer.data.epoch(0, 0)))
        trainer.task.train_step(batch)  # warm-up
        step_times = [timed(lambda: trainer.task.train_step(batch), device) for _ in range(args.steps)]
        result["train_step_seconds"] = statistics.median(step_times)
        log(f"training step: {result['train_step_seconds']:.3f} s")
        for name in [e.strip() for e in args.extractors.split(",") if e.strip()]:
            extractor = {"name": name}
            if name == "inception_v3":
                from torchvision.models import inception_v3

                torch.manual_seed(0)
                weights = root / "inception-random.pth"
                torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
                extractor["weights"] = str(weights)
            trainer.pipeline.train.val_extractor = ExtractorSpec.model_validate(extractor)
            trainer.best = None
            synchronize(device)
            start = time.perf_counter()
            validator = Validator.create(trainer)  # builds the extractor, computes the reference features
            synchronize(device)
            reference = time.perf_counter() - start
            runs = [timed(validator.run, device) for _ in range(args.rounds)]
            seconds = statistics.median(runs)
            result[name] = {"features": int(validator.reference.shape[1]), "validation_seconds": seconds,
                            "seconds_per_image": seconds / args.images, "reference_seconds": reference,
                            "validation_in_steps": seconds / result["train_step_seconds"]}
            log(f"{name}: validation {seconds:.2f} s = {result[name]['validation_in_steps']:.1f} training steps; "
                f"reference features {reference:.2f} s")
    emit(result)


if __name__ == "__main__":
    main()
