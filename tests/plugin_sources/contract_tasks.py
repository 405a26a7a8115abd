"""Third-party training tasks written against the public task contract only (img2img.tasks, img2img.config).

- ``painter``: one direction, its own net names (brush, critic) and optimiser names;
- ``unit``: each translator composed of two networks, decoder_b(encoder_a(x));
- ``keeper``: keeps references to its networks in attributes, as many recipes do;
- ``stale``: keeps a reference taken before the engine set the network up (refused);
- ``trio``: three domains as img2img 0.2 allowed them: the engine loads a and b, the task's own
  section ``third.folder`` holds domain c, which the task reads and crops itself; six directions;
- ``triad``: the same recipe with ``domains = ("a", "b", "c")``: the engine loads all three.
"""
import os
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from img2img import hookimpl
from img2img.config import DiscriminatorSpec, GeneratorSpec, PipelineBase, StrictModel
from img2img.tasks import Task, set_requires_grad, unwrap

BUILT = {"critic": 0}


def counting_critic(in_channels: int, *, ndf: int = 8) -> nn.Module:
    """A small PatchGAN-like critic that counts how often it is built."""
    BUILT["critic"] += 1
    return nn.Sequential(nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(ndf, 1, 4, 1, 1))


class PainterModel(StrictModel):
    generator: GeneratorSpec = Field(default_factory=lambda: GeneratorSpec(name="resnet_6blocks", ngf=8))
    discriminator: DiscriminatorSpec = Field(default_factory=lambda: DiscriminatorSpec(name="counting_critic"))


class PainterPipeline(PipelineBase):
    task: Literal["painter"] = "painter"
    model: PainterModel = Field(default_factory=PainterModel)
    keep_weight: float = 5.0


class Painter(Task):
    """Paints A as B: an adversarial term and an L1 term that keeps the input's content."""

    name = "painter"
    Pipeline = PainterPipeline
    data_kind = "unpaired"
    translator_nets = {"a2b": "brush"}

    def build(self):
        p = self.pipeline
        ca, cb = p.data.channels.a, p.data.channels.b
        self.nets["brush"] = self.build_net("generator", p.model.generator, in_channels=ca, out_channels=cb)
        self.nets["critic"] = self.build_net("discriminator", p.model.discriminator, in_channels=cb)
        self.optimizers["brush"] = torch.optim.Adam(self.nets["brush"].parameters(), lr=p.train.lr, betas=(0.5, 0.999))
        self.optimizers["critic"] = torch.optim.Adam(self.nets["critic"].parameters(), lr=p.train.lr,
                                                     betas=(0.5, 0.999))
        self.gan = self.build_loss({"name": "lsgan"})
        self.l1 = self.build_loss({"name": "l1"})

    def brush(self):
        return self.nets["brush"]

    def train_step(self, batch):
        batch = self.to_device(batch)
        a, b = batch["a"], batch["b"]
        brush, critic = self.brush(), self.nets["critic"]
        with self.amp.autocast():
            fake = brush(a)
        set_requires_grad([critic], True)
        with self.amp.autocast():
            loss_critic = self.gan.d_loss(critic(b), critic(fake.detach()))
        self.optimise(loss_critic, self.optimizers["critic"])
        set_requires_grad([critic], False)
        with self.amp.autocast():
            adv = self.gan.g_loss(unwrap(critic)(fake))
            keep = self.l1(fake, a) * self.pipeline.keep_weight
            loss = adv + keep + self.poison()
        self.optimise(loss, self.optimizers["brush"])
        set_requires_grad([critic], True)
        self.amp.update()
        return {"critic": loss_critic.detach(), "adv": adv.detach(), "keep": keep.detach()}

    def poison(self):
        """NaN on one torchrun rank at one step when PAINTER_NAN_RANK/PAINTER_NAN_STEP say so (tests)."""
        self.calls = getattr(self, "calls", 0) + 1
        rank, step = os.environ.get("PAINTER_NAN_RANK"), os.environ.get("PAINTER_NAN_STEP")
        if rank is not None and os.environ.get("RANK", "0") == rank and str(self.calls) == step:
            return torch.tensor(float("nan"), device=self.device)
        return 0.0

    def sample_columns(self, batch, translators):
        batch = self.to_device(batch)
        return [batch["a"], translators["a2b"](batch["a"])]


class StepDecayPainterPipeline(PainterPipeline):
    task: Literal["painter-steps"] = "painter-steps"


class StepDecayPainter(Painter):
    """The painter with a schedule of its own: the brush's rate halves every step."""

    name = "painter-steps"
    Pipeline = StepDecayPainterPipeline
    scheduler_interval = "step"

    def configure_schedulers(self):
        return {"brush": torch.optim.lr_scheduler.StepLR(self.optimizers["brush"], step_size=1, gamma=0.5)}


class KeeperPipeline(PainterPipeline):
    task: Literal["keeper"] = "keeper"


class Keeper(Painter):
    """The painter, written the way many recipes are: networks kept in attributes."""

    name = "keeper"
    Pipeline = KeeperPipeline

    def build(self):
        super().build()
        self.kept_brush = self.nets["brush"]  # what nets holds: the set-up (wrapped) network

    def brush(self):
        return self.kept_brush


class StalePipeline(PainterPipeline):
    task: Literal["stale"] = "stale"


class Stale(Painter):
    """Keeps the network it made before storing it in nets: refused by the engine when it wraps."""

    name = "stale"
    Pipeline = StalePipeline

    def build(self):
        super().build()
        p = self.pipeline
        brush = self.registry.build("generator", p.model.generator.ref(), in_channels=3, out_channels=3)
        self.nets["brush"] = brush
        self.optimizers["brush"] = torch.optim.Adam(self.nets["brush"].parameters(), lr=p.train.lr)
        self.raw_brush = brush

    def brush(self):
        return self.raw_brush


# -- a translator made of two networks -------------------------------------------------------------


class Encoder(nn.Sequential):
    size_multiple = 2

    def __init__(self, channels: int, width: int):
        super().__init__(nn.Conv2d(channels, width, 3, 1, 1), nn.InstanceNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 3, 2, 1), nn.InstanceNorm2d(2 * width), nn.ReLU())


class Decoder(nn.Sequential):
    def __init__(self, width: int, channels: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * width, width, 3, 1, 1),
                         nn.InstanceNorm2d(width), nn.ReLU(), nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh())


class Composed(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x):
        return self.decoder(self.encoder(x))


class UnitModel(StrictModel):
    width: int = Field(8, ge=1)
    discriminator: DiscriminatorSpec = Field(default_factory=lambda: DiscriminatorSpec(name="patchgan", ndf=8,
                                                                                         n_layers=2))


class UnitPipeline(PipelineBase):
    task: Literal["unit"] = "unit"
    model: UnitModel = Field(default_factory=UnitModel)


class Unit(Task):
    """A shared-latent recipe: encoders and decoders per domain; a2b is decoder_b(encoder_a(x))."""

    name = "unit"
    Pipeline = UnitPipeline
    data_kind = "unpaired"
    directions = ("a2b", "b2a")

    def build(self):
        p = self.pipeline
        ch = {"a": p.data.channels.a, "b": p.data.channels.b}
        for d in "ab":
            self.nets[f"enc_{d}"] = Encoder(ch[d], p.model.width)
            self.nets[f"dec_{d}"] = Decoder(p.model.width, ch[d])
            self.nets[f"d_{d}"] = self.build_net("discriminator", p.model.discriminator, in_channels=ch[d])
        gen = [q for k in ("enc_a", "dec_a", "enc_b", "dec_b") for q in self.nets[k].parameters()]
        self.optimizers["gen"] = self.adam(gen, "g")
        self.optimizers["disc"] = self.adam([*self.nets["d_a"].parameters(), *self.nets["d_b"].parameters()], "d")
        self.gan = self.build_loss({"name": "lsgan"})
        self.l1 = self.build_loss({"name": "l1"})

    @staticmethod
    def _ends(direction):
        return ("a", "b") if direction == "a2b" else ("b", "a")

    def translator(self, direction):
        src, dst = self._ends(direction)
        return Composed(self.nets[f"enc_{src}"], self.nets[f"dec_{dst}"])

    def build_translator(self, direction):
        src, dst = self._ends(direction)
        cin, cout = self.channels(direction)
        return Composed(Encoder(cin, self.pipeline.model.width), Decoder(self.pipeline.model.width, cout)).to(self.device)

    def train_step(self, batch):
        batch = self.to_device(batch)
        a, b = batch["a"], batch["b"]
        n = self.nets
        with self.amp.autocast():
            z_a, z_b = n["enc_a"](a), n["enc_b"](b)
            fake_b, fake_a = n["dec_b"](z_a), n["dec_a"](z_b)
        set_requires_grad([n["d_a"], n["d_b"]], True)
        with self.amp.autocast():
            loss_d = (self.gan.d_loss(n["d_b"](b), n["d_b"](fake_b.detach()))
                      + self.gan.d_loss(n["d_a"](a), n["d_a"](fake_a.detach())))
        self.optimise(loss_d, self.optimizers["disc"])
        set_requires_grad([n["d_a"], n["d_b"]], False)
        with self.amp.autocast():
            adv = self.gan.g_loss(unwrap(n["d_b"])(fake_b)) + self.gan.g_loss(unwrap(n["d_a"])(fake_a))
            rec = 10 * (self.l1(n["dec_a"](z_a), a) + self.l1(n["dec_b"](z_b), b))
        self.optimise(adv + rec, self.optimizers["gen"])
        set_requires_grad([n["d_a"], n["d_b"]], True)
        self.amp.update()
        return {"d": loss_d.detach(), "adv": adv.detach(), "rec": rec.detach()}

    def sample_columns(self, batch, translators):
        batch = self.to_device(batch)
        return [batch["a"], translators["a2b"](batch["a"]), batch["b"], translators["b2a"](batch["b"])]


# -- three domains, the third loaded by the task itself (img2img 0.2) ------------------------------


class TrioThird(StrictModel):
    folder: Path
    """The images of domain c (read by the task, not the engine)."""


class TrioPipeline(PipelineBase):
    task: Literal["trio"] = "trio"
    model: UnitModel = Field(default_factory=UnitModel)
    third: TrioThird


class Trio(Task):
    """Encoders and decoders per domain a, b, c; x2y is decoder_y(encoder_x(image))."""

    name = "trio"
    Pipeline = TrioPipeline
    data_kind = "unpaired"
    directions = ("a2b", "b2a", "a2c", "c2a", "b2c", "c2b")

    def build(self):
        from img2img.data import list_images, read_image, to_tensor

        p = self.pipeline
        ch = {d: p.data.channels.of(d) for d in "abc"}
        for d in "abc":
            self.nets[f"enc_{d}"] = Encoder(ch[d], p.model.width)
            self.nets[f"dec_{d}"] = Decoder(p.model.width, ch[d])
        self.nets["d_c"] = self.build_net("discriminator", p.model.discriminator, in_channels=ch["c"])
        self.optimizers["gen"] = self.adam([q for k in ("enc_a", "enc_b", "enc_c", "dec_a", "dec_b", "dec_c")
                                            for q in self.nets[k].parameters()], "g")
        self.optimizers["disc"] = self.adam(self.nets["d_c"].parameters(), "d")
        self.gan = self.build_loss({"name": "lsgan"})
        self.l1 = self.build_loss({"name": "l1"})
        self.c_next = 0
        if "c" not in self.domains:
            self.c_images = [to_tensor(read_image(f, 3))[:, :32, :32]
                             for f in list_images(p.third.folder, "third.folder")]

    def translator(self, direction):
        src, _, dst = direction.partition("2")
        return Composed(self.nets[f"enc_{src}"], self.nets[f"dec_{dst}"])

    def build_translator(self, direction):
        width = self.pipeline.model.width
        cin, cout = self.channels(direction)
        return Composed(Encoder(cin, width), Decoder(width, cout)).to(self.device)

    def extra_state(self):
        return {"c_next": self.c_next}

    def load_extra_state(self, state):
        self.c_next = state["c_next"]

    def train_step(self, batch):
        batch = self.to_device(batch)
        a, b = batch["a"], batch["b"]
        if "c" in batch:
            c = batch["c"]
        else:
            c = torch.stack([self.c_images[(self.c_next + i) % len(self.c_images)]
                             for i in range(len(a))]).to(self.device)
            self.c_next += len(a)
        n = self.nets
        fake_c = self.translator("a2c")(a)
        loss_d = self.gan.d_loss(n["d_c"](c), n["d_c"](fake_c.detach()))
        self.optimise(loss_d, self.optimizers["disc"])
        set_requires_grad([n["d_c"]], False)
        adv = self.gan.g_loss(unwrap(n["d_c"])(fake_c))
        rec = sum(self.l1(n[f"dec_{d}"](n[f"enc_{d}"](x)), x) for d, x in (("a", a), ("b", b), ("c", c)))
        cross = self.l1(self.translator("b2c")(b), self.translator("a2c")(a).detach())
        self.optimise(adv + 10 * rec + cross, self.optimizers["gen"])
        set_requires_grad([n["d_c"]], True)
        return {"d": loss_d.detach(), "adv": adv.detach(), "rec": rec.detach()}

    def sample_columns(self, batch, translators):
        batch = self.to_device(batch)
        return [batch["a"], translators["a2b"](batch["a"]), translators["a2c"](batch["a"])]


class TriadPipeline(PipelineBase):
    task: Literal["triad"] = "triad"
    model: UnitModel = Field(default_factory=UnitModel)


class Triad(Trio):
    """Trio written for data.domains: the engine loads, crops and seeds domain c with a and b."""

    name = "triad"
    Pipeline = TriadPipeline
    domains = ("a", "b", "c")


@hookimpl
def register_tasks(register):
    for task in (Painter, StepDecayPainter, Keeper, Stale, Unit, Trio, Triad):
        register(task.name, task)


@hookimpl
def register_discriminators(register):
    register("counting_critic", counting_critic)
