"""pix2pix (Isola et al. 2017): paired A -> B with a conditional PatchGAN and an L1 term.

Defaults are the reference recipe: U-Net-256 with batch norm and dropout 0.5, vanilla GAN loss,
L1 weight 100, a discriminator that sees the input and output concatenated, no history pool.
``losses.feature_matching`` (off by default) adds pix2pixHD's discriminator feature matching, for a
discriminator that exposes its features; multi-scale discriminators (a list of logits) need nothing.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from img2img.config import DiscriminatorSpec, GeneratorSpec, LossSpec, PipelineBase, StrictModel, TrainConfig
from img2img.hookspecs import hookimpl
from img2img.losses import exposes_features
from img2img.tasks.base import Task, meta_build, set_requires_grad, unwrap


class Pix2PixModel(StrictModel):
    generator: GeneratorSpec = Field(default_factory=lambda: GeneratorSpec(name="unet_256"))
    discriminator: DiscriminatorSpec = Field(
        default_factory=lambda: DiscriminatorSpec(name="patchgan", norm="batch"))


class Pix2PixLosses(StrictModel):
    adversarial: LossSpec = Field(default_factory=lambda: LossSpec(name="vanilla"))
    reconstruction: LossSpec = Field(default_factory=lambda: LossSpec(name="l1", weight=100.0))
    feature_matching: LossSpec = Field(default_factory=lambda: LossSpec(name="feature_matching", weight=0.0))
    """pix2pixHD's term (weight 10 there): L1 between the discriminator's features of (input, target)
    and of (input, translation), both from the discriminator as it is after its update; 0 is off."""


class Pix2PixTrain(TrainConfig):
    pool_size: int = Field(0, ge=0)


class Pix2PixPipeline(PipelineBase):
    task: Literal["pix2pix"] = "pix2pix"
    model: Pix2PixModel = Field(default_factory=Pix2PixModel)
    losses: Pix2PixLosses = Field(default_factory=Pix2PixLosses)
    train: Pix2PixTrain = Field(default_factory=Pix2PixTrain)


class Pix2Pix(Task):
    """Paired translation: g maps the input (data.a) to the target (data.b); d judges (input, output)."""

    name = "pix2pix"
    Pipeline = Pix2PixPipeline
    data_kind = "paired"
    translator_nets = {"a2b": "g"}
    discriminators = {"a2b": "d"}  # training health
    adversarial_terms = {"a2b": ("g_adv", "d")}

    @classmethod
    def validate(cls, pipeline: Pix2PixPipeline) -> list[tuple[str, str]]:
        problems = super().validate(pipeline)
        fm = pipeline.losses.feature_matching
        if fm.weight > 0:
            spec = pipeline.model.discriminator
            try:
                net = meta_build("discriminator", spec, in_channels=pipeline.data.channels.a + pipeline.data.channels.b)
            except Exception:  # a factory that cannot build on the meta device: training will tell
                net = None
            if net is not None and not exposes_features(net):
                problems.append(("losses.feature_matching.weight",
                                 f"discriminator '{spec.name}' does not expose its features (its forward takes no "
                                 "features=True): use one that does, such as patchgan, or set the weight to 0"))
        return problems

    def build(self) -> None:
        p = self.pipeline
        ca, cb = p.data.channels.a, p.data.channels.b
        self.nets["g"] = self.build_net("generator", p.model.generator, in_channels=ca, out_channels=cb)
        self.nets["d"] = self.build_net("discriminator", p.model.discriminator, in_channels=ca + cb)
        self.adversarial = self.build_loss(p.losses.adversarial)
        self.reconstruction = self.build_loss(p.losses.reconstruction)
        self.w_adv, self.w_rec = p.losses.adversarial.weight, p.losses.reconstruction.weight
        self.w_fm = p.losses.feature_matching.weight
        self.feature_matching = self.build_loss(p.losses.feature_matching) if self.w_fm > 0 else None
        self.optimizers["g"] = self.adam(self.nets["g"].parameters(), "g")
        self.optimizers["d"] = self.adam(self.nets["d"].parameters(), "d")

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self.to_device(batch)
        a, b = batch["a"], batch["b"]
        g, d = self.nets["g"], self.nets["d"]
        with self.amp.autocast():
            fake = g(a)
            real_pair = torch.cat([a, b], 1)
            fake_pair = torch.cat([a, fake.detach()], 1)
            losses = {"d": self.adversarial.d_loss(d(real_pair), d(fake_pair))}
            loss_d = losses["d"]
            penalty = self.adversarial.penalty(d, real_pair, fake_pair)
            if penalty is not None:
                loss_d = loss_d + penalty
        self.optimise(loss_d, self.optimizers["d"])
        set_requires_grad([d], False)
        with self.amp.autocast():
            if self.feature_matching is None:
                losses["g_adv"] = self.adversarial.g_loss(unwrap(d)(torch.cat([a, fake], 1))) * self.w_adv
            else:
                with torch.no_grad():
                    _, real_features = unwrap(d)(real_pair, features=True)
                fake_logits, fake_features = unwrap(d)(torch.cat([a, fake], 1), features=True)
                losses["g_adv"] = self.adversarial.g_loss(fake_logits) * self.w_adv
                losses["feature_matching"] = self.feature_matching(fake_features, real_features) * self.w_fm
            losses["rec"] = self.reconstruction(fake, b) * self.w_rec
            loss_g = losses["g_adv"] + losses["rec"]
            if "feature_matching" in losses:
                loss_g = loss_g + losses["feature_matching"]
        self.optimise(loss_g, self.optimizers["g"])
        set_requires_grad([d], True)
        self.amp.update()
        return {k: v.detach().float() for k, v in losses.items()}

    def judge(self, direction: str, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The conditional discriminator sees the input beside the (real or translated) output."""
        return unwrap(self.nets["d"])(torch.cat([source, output], 1))

    @torch.no_grad()
    def sample_columns(self, batch, translators):
        batch = self.to_device(batch)
        return [batch["a"], translators["a2b"](batch["a"]), batch["b"]]


@hookimpl
def register_tasks(register):
    register("pix2pix", Pix2Pix)
