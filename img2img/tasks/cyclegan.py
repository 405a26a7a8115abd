"""CycleGAN (Zhu et al. 2017): unpaired A <-> B with cycle-consistency and identity losses.

Defaults are the reference recipe: ResNet-9-block generators, 70x70 PatchGAN, LSGAN, cycle weight
10, identity weight 5 (0.5 x cycle), a history pool of 50, Adam 2e-4 (0.5, 0.999).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from img2img.config import DiscriminatorSpec, GeneratorSpec, LossSpec, PipelineBase, StrictModel
from img2img.hookspecs import hookimpl
from img2img.tasks.base import Task, set_requires_grad, unwrap
from img2img.tasks.pool import ImagePool


class CycleGANModel(StrictModel):
    generator: GeneratorSpec = Field(default_factory=lambda: GeneratorSpec(name="resnet_9blocks"))
    discriminator: DiscriminatorSpec = Field(default_factory=lambda: DiscriminatorSpec(name="patchgan"))


class CycleGANLosses(StrictModel):
    adversarial: LossSpec = Field(default_factory=lambda: LossSpec(name="lsgan"))
    cycle: LossSpec = Field(default_factory=lambda: LossSpec(name="l1", weight=10.0))
    identity: LossSpec = Field(default_factory=lambda: LossSpec(name="l1", weight=5.0))


class CycleGANPipeline(PipelineBase):
    task: Literal["cyclegan"] = "cyclegan"
    model: CycleGANModel = Field(default_factory=CycleGANModel)
    losses: CycleGANLosses = Field(default_factory=CycleGANLosses)


class CycleGAN(Task):
    """Unpaired translation: g_ab maps A to B, g_ba maps B to A; d_b judges "is this a real B?"."""

    name = "cyclegan"
    Pipeline = CycleGANPipeline
    data_kind = "unpaired"
    translator_nets = {"a2b": "g_ab", "b2a": "g_ba"}
    discriminators = {"a2b": "d_b", "b2a": "d_a"}  # training health
    adversarial_terms = {"a2b": ("g_ab", "d_b"), "b2a": ("g_ba", "d_a")}

    @classmethod
    def validate(cls, pipeline: CycleGANPipeline) -> list[tuple[str, str]]:
        problems = super().validate(pipeline)
        ch = pipeline.data.channels
        if ch.a != ch.b and pipeline.losses.identity.weight > 0:
            problems.append(("losses.identity.weight",
                             f"identity loss needs the same channels in A and B (got {ch.a} and {ch.b}); set it to 0"))
        return problems

    def build(self) -> None:
        p = self.pipeline
        ca, cb = p.data.channels.a, p.data.channels.b
        self.nets["g_ab"] = self.build_net("generator", p.model.generator, in_channels=ca, out_channels=cb)
        self.nets["g_ba"] = self.build_net("generator", p.model.generator, in_channels=cb, out_channels=ca)
        self.nets["d_a"] = self.build_net("discriminator", p.model.discriminator, in_channels=ca)
        self.nets["d_b"] = self.build_net("discriminator", p.model.discriminator, in_channels=cb)
        self.adversarial = self.build_loss(p.losses.adversarial)
        self.cycle = self.build_loss(p.losses.cycle)
        self.identity = self.build_loss(p.losses.identity)
        self.w_adv, self.w_cycle, self.w_idt = (p.losses.adversarial.weight, p.losses.cycle.weight,
                                                p.losses.identity.weight)
        self.optimizers["g"] = self.adam([*self.nets["g_ab"].parameters(), *self.nets["g_ba"].parameters()], "g")
        self.optimizers["d"] = self.adam([*self.nets["d_a"].parameters(), *self.nets["d_b"].parameters()], "d")
        self.pool_a = ImagePool(p.train.pool_size, seed=p.seed + 1)
        self.pool_b = ImagePool(p.train.pool_size, seed=p.seed + 2)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self.to_device(batch)
        a, b = batch["a"], batch["b"]
        g_ab, g_ba, d_a, d_b = (self.nets[k] for k in ("g_ab", "g_ba", "d_a", "d_b"))
        # Generators: D is frozen and used without its distributed wrapper (no gradient to sync).
        set_requires_grad([d_a, d_b], False)
        with self.amp.autocast():
            fake_b = g_ab(a)
            rec_a = g_ba(fake_b)
            fake_a = g_ba(b)
            rec_b = g_ab(fake_a)
            losses = {
                "g_ab": self.adversarial.g_loss(unwrap(d_b)(fake_b)) * self.w_adv,
                "g_ba": self.adversarial.g_loss(unwrap(d_a)(fake_a)) * self.w_adv,
                "cycle_a": self.cycle(rec_a, a) * self.w_cycle,
                "cycle_b": self.cycle(rec_b, b) * self.w_cycle,
            }
            if self.w_idt > 0:
                losses["idt_a"] = self.identity(g_ba(a), a) * self.w_idt
                losses["idt_b"] = self.identity(g_ab(b), b) * self.w_idt
            loss_g = sum(losses.values())
        self.optimise(loss_g, self.optimizers["g"])
        # Discriminators: real vs a fake from the history pool.
        set_requires_grad([d_a, d_b], True)
        fake_b_old = self.pool_b.query(fake_b.detach())
        fake_a_old = self.pool_a.query(fake_a.detach())
        with self.amp.autocast():
            losses["d_b"] = self.adversarial.d_loss(d_b(b), d_b(fake_b_old))
            losses["d_a"] = self.adversarial.d_loss(d_a(a), d_a(fake_a_old))
            loss_d = losses["d_a"] + losses["d_b"]
            for d, real, fake in ((d_b, b, fake_b_old), (d_a, a, fake_a_old)):
                penalty = self.adversarial.penalty(d, real, fake)
                if penalty is not None:
                    loss_d = loss_d + penalty
        self.optimise(loss_d, self.optimizers["d"])
        self.amp.update()
        return {k: v.detach().float() for k, v in losses.items()}

    @torch.no_grad()
    def sample_columns(self, batch, translators):
        batch = self.to_device(batch)
        a, b = batch["a"], batch["b"]
        g_ab, g_ba = translators["a2b"], translators["b2a"]
        fake_b, fake_a = g_ab(a), g_ba(b)
        return [a, fake_b, g_ba(fake_b), b, fake_a, g_ab(fake_a)]

    def extra_state(self) -> dict:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.pool_a.load_state_dict(state["pool_a"], self.device)
        self.pool_b.load_state_dict(state["pool_b"], self.device)


@hookimpl
def register_tasks(register):
    register("cyclegan", CycleGAN)
