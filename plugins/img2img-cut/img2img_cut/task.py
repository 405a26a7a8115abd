"""CUT and FastCUT (Park et al. 2020): one generator A -> B, an adversarial loss and PatchNCE.

Instead of CycleGAN's second generator and cycle loss, each patch of the translation is pulled
towards the input patch at the same place and pushed away from the image's other patches, in the
generator's own encoder features. ``mode: cut`` adds the same loss on B -> g(B) (an identity
term); ``mode: fastcut`` drops it, weights PatchNCE 10x and trains on randomly mirrored inputs
(flip-equivariance), in 150 + 50 epochs instead of 100 + 100.
"""
from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from img2img.config import DiscriminatorSpec, GeneratorSpec, LossSpec, PipelineBase, StrictModel
from img2img.tasks import ImagePool, Task, set_requires_grad, unwrap

from img2img_cut.patchnce import ProjectionHeads, sample_patch_ids

RESNET_NCE_LAYERS = [0, 4, 7, 10, 14]
"""The paper's layers 0, 4, 8, 12, 16 in our ResNet generators' indices (see `ResnetGenerator`):
the padded input, the first and second stride-2 convolutions, the first and fifth residual blocks.
The reference counts 4 layers per downsampling (its anti-aliased blur adds one), we count 3."""

ANTIALIAS_NCE_LAYERS = [0, 4, 8, 12, 16]
"""The same layers in a ResNet generator with ``antialias: true``, whose layers are CUT's own: the
padded input, the first and second (stride-1) downsampling convolutions, residual blocks 1 and 5."""

MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cut": {"nce_weight": 1.0, "identity": True, "flip_equivariance": False, "epochs": 100, "decay_epochs": 100},
    "fastcut": {"nce_weight": 10.0, "identity": False, "flip_equivariance": True, "epochs": 150,
                "decay_epochs": 50},
}


class CUTModel(StrictModel):
    generator: GeneratorSpec = Field(default_factory=lambda: GeneratorSpec(name="resnet_9blocks"))
    discriminator: DiscriminatorSpec = Field(default_factory=lambda: DiscriminatorSpec(name="patchgan"))


class CUTLosses(StrictModel):
    adversarial: LossSpec = Field(default_factory=lambda: LossSpec(name="lsgan"))
    nce: LossSpec = Field(default_factory=lambda: LossSpec(name="patchnce", weight=1.0))


class NCEConfig(StrictModel):
    """Where and how PatchNCE looks: generator layers, patches per layer, projection width."""

    layers: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = Field(
        default_factory=lambda: list(RESNET_NCE_LAYERS))
    num_patches: Annotated[int, Field(ge=1)] = 256
    head_units: Annotated[int, Field(ge=1)] = 256
    identity: bool = True
    flip_equivariance: bool = False

    @field_validator("layers")
    @classmethod
    def _distinct(cls, layers: list[int]) -> list[int]:
        if len(set(layers)) != len(layers):
            raise ValueError("must be distinct")
        return layers


class CUTPipeline(PipelineBase):
    """`mode` picks the paper's recipe; any field set explicitly wins over the mode's default.

    ``nce.layers`` defaults to the paper's five layers in the generator's indices: `RESNET_NCE_LAYERS`,
    or `ANTIALIAS_NCE_LAYERS` for a ResNet generator with ``antialias: true``.
    """

    task: Literal["cut"] = "cut"
    mode: Literal["cut", "fastcut"] = "cut"
    model: CUTModel = Field(default_factory=CUTModel)
    losses: CUTLosses = Field(default_factory=CUTLosses)
    nce: NCEConfig = Field(default_factory=NCEConfig)

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        """Fill what the mode decides (NCE weight, identity, flips, schedule, no pool) where left unset."""
        if not isinstance(data, dict) or data.get("mode", "cut") not in MODE_DEFAULTS:
            return data  # the field validation reports it
        defaults = MODE_DEFAULTS[data.get("mode", "cut")]
        data = dict(data)

        def section(key: str) -> dict | None:
            value = data.get(key)
            if value is None:
                value = {}
            if not isinstance(value, dict):
                return None
            data[key] = value = dict(value)
            return value

        if (losses := section("losses")) is not None:
            nce = losses.get("nce", {"name": "patchnce"})
            if isinstance(nce, dict) and "weight" not in nce:
                losses["nce"] = {**nce, "weight": defaults["nce_weight"]}
        if (nce_config := section("nce")) is not None:
            for key in ("identity", "flip_equivariance"):
                nce_config.setdefault(key, defaults[key])
            model = data.get("model")
            generator = model.get("generator") if isinstance(model, dict) else None
            if isinstance(generator, dict) and generator.get("antialias") is True:
                nce_config.setdefault("layers", list(ANTIALIAS_NCE_LAYERS))  # CUT's own layer indices
        if (train := section("train")) is not None:
            train.setdefault("epochs", defaults["epochs"])
            train.setdefault("decay_epochs", defaults["decay_epochs"])
            train.setdefault("pool_size", 0)  # CUT's discriminator sees the current fakes only
        return data


class CUT(Task):
    """Contrastive unpaired translation: g_ab maps A to B, d_b judges "is this a real B?"."""

    name = "cut"
    Pipeline = CUTPipeline
    data_kind = "unpaired"
    translator_nets = {"a2b": "g_ab"}
    discriminators = {"a2b": "d_b"}  # training health
    adversarial_terms = {"a2b": ("g_ab", "d_b")}

    @classmethod
    def validate(cls, pipeline: CUTPipeline) -> list[tuple[str, str]]:
        from img2img.registry import get_registry

        problems = super().validate(pipeline)
        ch = pipeline.data.channels
        if pipeline.nce.identity and ch.a != ch.b:
            problems.append(("nce.identity", f"the NCE identity term translates B images, so A and B need the "
                                             f"same channels (got {ch.a} and {ch.b}); set it to false"))
        spec = pipeline.model.generator
        with torch.device("meta"):
            net = get_registry().build("generator", spec.ref(), in_channels=ch.a, out_channels=ch.b)
        if not callable(getattr(net, "features", None)):
            problems.append(("model.generator.name",
                             f"generator '{spec.name}' has no features(x, layers) method, which the cut task "
                             "needs for PatchNCE; use resnet_9blocks or resnet_6blocks, or add features() to the "
                             "generator (see img2img/hookspecs.py)"))
            return problems
        try:
            _probe_features(net, ch.a, pipeline.nce.layers, torch.device("meta"))
        except (ValueError, IndexError) as exc:
            problems.append(("nce.layers", f"{exc} (generator '{spec.name}'); set nce.layers to its encoder layers"))
        except (NotImplementedError, RuntimeError):
            pass  # the generator cannot run on the meta device; its layers are checked when training starts
        return problems

    def build(self) -> None:
        p = self.pipeline
        ca, cb = p.data.channels.a, p.data.channels.b
        self.nets["g_ab"] = self.build_net("generator", p.model.generator, in_channels=ca, out_channels=cb)
        self.nets["d_b"] = self.build_net("discriminator", p.model.discriminator, in_channels=cb)
        self.layers = list(p.nce.layers)
        self.nets["heads"] = ProjectionHeads(self._feature_widths(ca, cb), units=p.nce.head_units)
        self.adversarial = self.build_loss(p.losses.adversarial)
        self.patchnce = self.build_loss(p.losses.nce)
        self.w_adv, self.w_nce = p.losses.adversarial.weight, p.losses.nce.weight
        self.use_identity = p.nce.identity and self.w_nce > 0
        self.optimizers["g"] = self.adam(self.nets["g_ab"].parameters(), "g")
        self.optimizers["d"] = self.adam(self.nets["d_b"].parameters(), "d")
        self.optimizers["heads"] = self.adam(self.nets["heads"].parameters(), "g")
        self.pool_b = ImagePool(p.train.pool_size, seed=p.seed + 2)
        # Patch locations and flips come from the task's own generator, saved with the checkpoint.
        self.rng = torch.Generator().manual_seed(p.seed + 3)

    def _feature_widths(self, ca: int, cb: int) -> list[int]:
        """Channels of each NCE layer, from a forward pass of a meta-device copy (no compute, no RNG)."""
        spec = self.pipeline.model.generator
        try:
            with torch.device("meta"):
                net = self.registry.build("generator", spec.ref(), in_channels=ca, out_channels=cb)
            feats = _probe_features(net, ca, self.layers, torch.device("meta"))
        except (NotImplementedError, RuntimeError):
            # Some operation has no meta kernel: probe an eval-mode copy of the real generator instead.
            net = copy.deepcopy(unwrap(self.nets["g_ab"])).eval()
            with torch.no_grad():
                feats = _probe_features(net, ca, self.layers, torch.device("cpu"))
        return [int(f.shape[1]) for f in feats]

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self.to_device(batch)
        a, b = batch["a"], batch["b"]
        g, d = self.nets["g_ab"], self.nets["d_b"]
        real = torch.cat([a, b]) if self.use_identity else a
        flipped = self.pipeline.nce.flip_equivariance and bool(torch.rand((), generator=self.rng) < 0.5)
        if flipped:
            real = real.flip(3)
        with self.amp.autocast():
            fake = g(real)
        fake_b = fake[: a.shape[0]]
        # Discriminator first, on the current fakes (or the history pool when train.pool_size > 0).
        set_requires_grad([d], True)
        fake_for_d = self.pool_b.query(fake_b.detach())
        losses: dict[str, torch.Tensor] = {}
        with self.amp.autocast():
            loss_d = losses["d_b"] = self.adversarial.d_loss(d(b), d(fake_for_d))
            penalty = self.adversarial.penalty(d, b, fake_for_d)
            if penalty is not None:
                loss_d = loss_d + penalty
        self.optimise(loss_d, self.optimizers["d"])
        # Generator and projection heads: D is frozen and used without its distributed wrapper.
        set_requires_grad([d], False)
        with self.amp.autocast():
            losses["g_ab"] = self.adversarial.g_loss(unwrap(d)(fake_b)) * self.w_adv
            loss_g = losses["g_ab"]
            if self.w_nce > 0:
                losses["nce"] = self._nce(a, fake_b, flipped) * self.w_nce
                if self.use_identity:
                    losses["nce_idt"] = self._nce(b, fake[a.shape[0]:], flipped) * self.w_nce
                    loss_g = loss_g + 0.5 * (losses["nce"] + losses["nce_idt"])
                else:
                    loss_g = loss_g + losses["nce"]
        self.optimise(loss_g, self.optimizers["g"], self.optimizers["heads"])
        self.amp.update()
        return {k: v.detach().float() for k, v in losses.items()}

    def _nce(self, source: torch.Tensor, translated: torch.Tensor, flipped: bool) -> torch.Tensor:
        """PatchNCE between `translated` (queries) and the `source` it came from (keys), mean over layers."""
        gen = unwrap(self.nets["g_ab"])
        queries = gen.features(translated, self.layers)
        if flipped:  # translated came from the mirrored source: mirror back so patches line up
            queries = [q.flip(3) for q in queries]
        with torch.no_grad():  # keys get no gradient (the loss detaches them), so keep no graph
            keys = gen.features(source, self.layers)
            ids = sample_patch_ids(keys, self.pipeline.nce.num_patches, self.rng)
            projected_keys = self.nets["heads"](keys, ids)
        projected_queries = self.nets["heads"](queries, ids)
        total = sum(self.patchnce(q, k) for q, k in zip(projected_queries, projected_keys))
        return total / len(self.layers)

    @torch.no_grad()
    def sample_columns(self, batch: dict[str, torch.Tensor], translators: dict[str, nn.Module]) -> list[torch.Tensor]:
        """A | g(A), and with the identity term also B | g(B) (which should change little)."""
        batch = self.to_device(batch)
        a, b = batch["a"], batch["b"]
        g = translators["a2b"]
        columns = [a, g(a)]
        if self.pipeline.nce.identity:
            columns += [b, g(b)]
        return columns

    def extra_state(self) -> dict:
        return {"rng": self.rng.get_state(), "pool_b": self.pool_b.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.rng.set_state(state["rng"])
        self.pool_b.load_state_dict(state["pool_b"], self.device)


def _probe_features(net: nn.Module, in_channels: int, layers: list[int], device: torch.device) -> list[torch.Tensor]:
    """Run ``net.features`` on a blank 64-ish pixel image (a multiple of the generator's size multiple)."""
    multiple = int(getattr(net, "size_multiple", 1))
    size = multiple * max(1, -(-64 // multiple))
    return net.features(torch.zeros(1, in_channels, size, size, device=device), layers)
