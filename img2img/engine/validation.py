"""Validation during training: translate `data.val`, score it, keep `checkpoints/best.pt`.

pix2pix scores its outputs against the paired targets (L1 on [0, 1] by default, or PSNR/SSIM);
CycleGAN has no targets, so it scores the cycle reconstruction A -> B -> A (and B -> A -> B when
`data.val.b` is given) with L1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from img2img.engine import checkpoint as ckpt_io
from img2img.errors import Img2ImgError
from img2img.inference.tiling import SizeAdapter

HIGHER_IS_BETTER = {"psnr", "ssim"}
PAIRED_METRICS = ("l1", "psnr", "ssim")
UNPAIRED_METRICS = ("cycle_l1",)


def run_generator(gen: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Translate at the input's own size: pad to the generator's multiple, crop back."""
    return SizeAdapter(gen, int(getattr(gen, "size_multiple", 1)))(x)


@dataclass
class Validator:
    trainer: object
    metric: str
    every: int
    images: list[tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=list)
    images_b: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def create(cls, trainer) -> Validator | None:
        from img2img.data import list_images, match_pairs, read_image, to_tensor

        p = trainer.pipeline
        if p.data.val is None:
            return None
        paired = trainer.task.data_kind == "paired"
        metric = p.train.val_metric or ("l1" if paired else "cycle_l1")
        allowed = PAIRED_METRICS if paired else UNPAIRED_METRICS
        if metric not in allowed:
            raise Img2ImgError(f"train.val_metric: '{metric}' is not available for the {p.task} task; "
                               f"use one of {', '.join(allowed)}")
        ch = p.data.channels
        val = p.data.val
        files_a = list_images(val.a, "data.val.a")
        v = cls(trainer=trainer, metric=metric, every=p.train.val_every or p.train.checkpoint_every)
        if paired:
            if val.b is None:
                raise Img2ImgError("data.val.b: the targets of the validation inputs are required for "
                                   f"{p.task}, paired by file name with data.val.a")
            for a_path, b_path in match_pairs(files_a, val.a, list_images(val.b, "data.val.b"), val.b,
                                              ("data.val.a", "data.val.b")):
                v.images.append((to_tensor(read_image(a_path, ch.a)), to_tensor(read_image(b_path, ch.b))))
        else:
            v.images = [(to_tensor(read_image(f, ch.a)), None) for f in files_a]
            if val.b is not None:
                v.images_b = [to_tensor(read_image(f, ch.b)) for f in list_images(val.b, "data.val.b")]
        return v

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    @torch.no_grad()
    def scores(self) -> dict[str, float]:
        from img2img.evaluation.metrics import paired_scores

        trainer = self.trainer
        gens = trainer.generators_for_eval()
        modes = {d: g.training for d, g in gens.items()}
        for g in gens.values():
            g.eval()
        device = trainer.device
        sums: dict[str, float] = {}
        count = 0
        try:
            with trainer.task.amp.autocast():
                pairs = []
                if trainer.task.data_kind == "paired":
                    for x, target in self.images:
                        pairs.append((run_generator(gens["a2b"], x[None].to(device)), target[None]))
                else:
                    for x, _ in self.images:
                        x = x[None].to(device)
                        pairs.append((run_generator(gens["b2a"], run_generator(gens["a2b"], x)), x))
                    for x in self.images_b:
                        x = x[None].to(device)
                        pairs.append((run_generator(gens["a2b"], run_generator(gens["b2a"], x)), x))
                for pred, target in pairs:
                    pred = ((pred.float().cpu() + 1) / 2).clamp(0, 1)
                    target = ((target.float().cpu() + 1) / 2).clamp(0, 1)
                    values = {"l1": float((pred - target).abs().mean())}
                    if trainer.task.data_kind == "paired" and min(pred.shape[-2:]) >= 11:
                        scored = paired_scores(pred, target)
                        values.update(psnr=min(scored["psnr"], 100.0), ssim=scored["ssim"])
                    for k, val in values.items():
                        sums[k] = sums.get(k, 0.0) + val
                    count += 1
        finally:
            for d, g in gens.items():
                g.train(modes[d])
        out = {k: v / max(1, count) for k, v in sums.items()}
        if self.metric == "cycle_l1":
            out = {"cycle_l1": out["l1"]}
        return out

    def run(self) -> dict:
        """Score, log row, and write best.pt when the chosen metric improved."""
        trainer = self.trainer
        scores = self.scores()
        value = scores[self.metric]
        best = trainer.best
        better = best is None or (value > best["value"] if self.metric in HIGHER_IS_BETTER else value < best["value"])
        row = {"step": trainer.step, "epoch": trainer.epoch, **{f"val_{k}": v for k, v in scores.items()}}
        if better:
            trainer.best = {"metric": self.metric, "value": value, "step": trainer.step}
            ckpt_io.atomic_save(trainer.state(), trainer.run.checkpoints / "best.pt")
            row["val_best"] = 1
        return row
