"""The ``stargan`` task: StarGAN (Choi, Choi, Kim, Ha, Kim and Choo, CVPR 2018) over ``data.domains``.

One generator G translates an image into any domain: the target domain's one-hot code is concatenated
to the image as channels. One discriminator D outputs real/fake patch logits and the domain's class
logits. A step (the official solver, yunjey/stargan):

- D: adversarial loss on real images and on G(x, target), classification loss (cross-entropy) of the
  real images' domains, and, with ``wgan_gp``, the gradient penalty;
- G, every ``stargan.n_critic`` D steps: adversarial loss, classification of G(x, target) as the
  target domain, and reconstruction ``|G(G(x, target), source) - x|``.

Defaults are the paper's: WGAN-GP (gradient penalty weight 10), lambda_cls 1, lambda_rec 10,
n_critic 5, Adam 1e-4 (0.5, 0.999) (``train.lr: 0.0001`` in the stargan pipeline). Every ordered pair of domains is a direction (``a2c``, ...); its
translator is G with the target's code baked in (`DomainConditioned`), so each direction exports to
one ONNX graph that takes the image alone.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from img2img.config import DiscriminatorSpec, GeneratorSpec, LossSpec, PipelineBase, StrictModel
from img2img.config.domains import all_directions, split_direction
from img2img.tasks import Task, set_requires_grad, unwrap
from img2img_stargan.networks import DomainConditioned, condition


class StarGANModel(StrictModel):
    generator: GeneratorSpec = Field(default_factory=lambda: GeneratorSpec(name="stargan_generator"))
    discriminator: DiscriminatorSpec = Field(default_factory=lambda: DiscriminatorSpec(name="stargan_discriminator"))


class StarGANLosses(StrictModel):
    adversarial: LossSpec = Field(default_factory=lambda: LossSpec(name="wgan_gp", gp_weight=10.0))
    reconstruction: LossSpec = Field(default_factory=lambda: LossSpec(name="l1", weight=10.0))


class StarGANSettings(StrictModel):
    lambda_cls: float = Field(1.0, ge=0)
    """Weight of the domain classification losses (D on real images, G on its translations)."""
    n_critic: int = Field(5, ge=1)
    """D updates per G update."""


class StarGANPipeline(PipelineBase):
    task: Literal["stargan"] = "stargan"
    model: StarGANModel = Field(default_factory=StarGANModel)
    losses: StarGANLosses = Field(default_factory=StarGANLosses)
    stargan: StarGANSettings = Field(default_factory=StarGANSettings)


class StarGAN(Task):
    """One generator ``g`` for every direction, one discriminator ``d`` with a domain classifier."""

    name = "stargan"
    Pipeline = StarGANPipeline
    data_kind = "unpaired"

    # -- domains and directions: those of data.domains -------------------------------------------
    @classmethod
    def domains_for(cls, pipeline: PipelineBase) -> tuple[str, ...]:
        return tuple(pipeline.data.domain_folders())

    @classmethod
    def directions_for(cls, pipeline: PipelineBase) -> tuple[str, ...]:
        return all_directions(cls.domains_for(pipeline))

    @classmethod
    def validate(cls, pipeline: StarGANPipeline) -> list[tuple[str, str]]:
        problems = super().validate(pipeline)
        domains = cls.domains_for(pipeline)
        if len(domains) < 2:
            problems.append(("data.domains", "StarGAN needs at least two domains"))
        counts = {d: pipeline.data.channels.of(d) for d in domains}
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{d}: {n}" for d, n in counts.items())
            problems.append(("data.channels", f"StarGAN's one generator needs the same channel count in every domain "
                                              f"(got {listing})"))
        from img2img.registry import get_registry

        registry = get_registry()
        name = pipeline.model.discriminator.name
        if registry.has("discriminator", name) and \
                "num_domains" not in registry.get("discriminator", name).params.model_fields:
            problems.append(("model.discriminator.name", f"'{name}' has no domain classifier; StarGAN needs a "
                                                         "discriminator with a num_domains parameter, such as "
                                                         "stargan_discriminator"))
        return problems

    # -- building --------------------------------------------------------------------------------
    @property
    def domain_index(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.domains_for(self.pipeline))}

    def _channels(self) -> int:
        return self.pipeline.data.channels.of(next(iter(self.domain_index)))

    def build(self) -> None:
        p = self.pipeline
        n, ch = len(self.domain_index), self._channels()
        self.nets["g"] = self.build_net("generator", p.model.generator, in_channels=ch + n, out_channels=ch)
        self.nets["d"] = self.build_net("discriminator", {**p.model.discriminator.ref(), "num_domains": n},
                                        in_channels=ch)
        self.optimizers["g"] = self.adam(self.nets["g"].parameters(), "g")
        self.optimizers["d"] = self.adam(self.nets["d"].parameters(), "d")
        self.adversarial = self.build_loss(p.losses.adversarial)
        self.reconstruction = self.build_loss(p.losses.reconstruction)
        self.d_updates = 0
        self.last_g: dict[str, torch.Tensor] = {k: torch.zeros((), device=self.device) for k in ("g_adv", "g_cls", "g_rec")}
        self.adversarial_terms = {d: ("g_adv", "d_adv") for d in self.directions}  # training health

    def translator(self, direction: str) -> nn.Module:
        index = self.domain_index
        return DomainConditioned(self.nets["g"], index[split_direction(direction)[1]], len(index))

    def build_translator(self, direction: str) -> nn.Module:
        index, ch = self.domain_index, self._channels()
        with self.plain_nets():
            g = self.build_net("generator", self.pipeline.model.generator, in_channels=ch + len(index), out_channels=ch)
        return DomainConditioned(g, index[split_direction(direction)[1]], len(index)).to(self.device)

    # -- one step --------------------------------------------------------------------------------
    def _real_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for domain, i in self.domain_index.items():
            images.append(batch[domain])
            labels.append(torch.full((batch[domain].shape[0],), i, dtype=torch.long, device=self.device))
        return torch.cat(images), torch.cat(labels)

    def _penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The adversarial loss's penalty on D's real/fake logits (WGAN-GP's gradient penalty), else 0."""
        d = self.nets["d"]
        value = self.adversarial.penalty(lambda x: d(x)[0], real, fake)
        return torch.zeros((), device=self.device) if value is None else value

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self.to_device(batch)
        settings, n = self.pipeline.stargan, len(self.domain_index)
        g, d = self.nets["g"], self.nets["d"]
        x, source = self._real_batch(batch)
        # a random other domain for every image (the official code permutes the labels, which may keep one)
        target = (source + torch.randint(1, n, source.shape, device=self.device)) % n

        set_requires_grad([d], True)
        with self.amp.autocast():
            fake = g(condition(x, target, n))
            real_src, real_cls = d(x)
            fake_src, _ = d(fake.detach())
            d_adv = self.adversarial.d_loss(real_src, fake_src)
            d_cls = F.cross_entropy(real_cls.float(), source)
            d_gp = self._penalty(x, fake)
            loss_d = d_adv + settings.lambda_cls * d_cls + d_gp
        self.optimise(loss_d, self.optimizers["d"])
        self.d_updates += 1

        if self.d_updates % settings.n_critic == 0:
            set_requires_grad([d], False)
            with self.amp.autocast():
                fake = g(condition(x, target, n))
                src, cls = unwrap(d)(fake)
                g_adv = self.adversarial.g_loss(src)
                g_cls = F.cross_entropy(cls.float(), target)
                g_rec = self.reconstruction(g(condition(fake, source, n)), x) * self.pipeline.losses.reconstruction.weight
                loss_g = g_adv + settings.lambda_cls * g_cls + g_rec
            self.optimise(loss_g, self.optimizers["g"])
            set_requires_grad([d], True)
            self.last_g = {"g_adv": g_adv.detach(), "g_cls": g_cls.detach(), "g_rec": g_rec.detach()}
        self.amp.update()
        out = {"d_adv": d_adv.detach(), "d_cls": d_cls.detach(), "d_gp": d_gp.detach(), **self.last_g}
        return {k: v.float() for k, v in out.items()}

    def extra_state(self) -> dict:
        return {"d_updates": self.d_updates, "last_g": {k: v.cpu() for k, v in self.last_g.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.d_updates = int(state["d_updates"])
        self.last_g = {k: v.to(self.device) for k, v in state["last_g"].items()}

    # -- samples and health ----------------------------------------------------------------------
    def sample_columns(self, batch, translators):
        batch = self.to_device(batch)
        columns = []
        for source in self.domain_index:
            columns.append(batch[source])
            columns += [translators[f"{source}2{t}"](batch[source]) for t in self.domain_index if t != source]
        return columns

    def discriminator_key(self, direction: str) -> str | None:
        return "d"

    def judge(self, direction: str, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The real/fake patch logits (the classification head does not judge realism)."""
        out = unwrap(self.nets["d"])(output)
        return out[0] if isinstance(out, (tuple, list)) else out
