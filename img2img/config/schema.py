"""The pipeline schema: pydantic models every task's pipeline is built from (no registry here).

A task's ``Pipeline`` subclasses `PipelineBase` with its own ``model`` and ``losses`` sections; the
component specs (``{name: ..., **params}``) are checked against the registry by `img2img.config`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from img2img.config.domains import check_domain_name
from img2img.config.health import HealthMode, HealthThresholds

Direction = Literal["a2b", "b2a"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class ComponentSpec(BaseModel):
    """``{name: ..., **params}``: the params are checked against the component's factory."""

    model_config = ConfigDict(extra="allow")
    kind: ClassVar[str] = ""
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def ref(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


class ExtractorSpec(BaseModel):
    """``train.val_extractor``: ``{name: ..., **params}`` of a feature extractor (or just its name).

    Not a `ComponentSpec` on purpose: it is checked when a training starts and by ``img2img
    validate``, not whenever a checkpoint is opened, so translate and export never need the
    extractor's plugin or weights.
    """

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def ref(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


class GeneratorSpec(ComponentSpec):
    kind: ClassVar[str] = "generator"


class DiscriminatorSpec(ComponentSpec):
    kind: ClassVar[str] = "discriminator"


class LossSpec(ComponentSpec):
    kind: ClassVar[str] = "loss"
    weight: float = Field(1.0, ge=0)


class Channels(BaseModel):
    """``data.channels``: 1, 3 or 4 per domain (``a`` and ``b``, and any other domain of
    ``data.domains``), or one number for every domain."""

    model_config = ConfigDict(extra="allow")
    a: Literal[1, 3, 4] = 3
    b: Literal[1, 3, 4] = 3

    @model_validator(mode="after")
    def _counts_of_other_domains(self) -> Channels:
        for name, value in (self.__pydantic_extra__ or {}).items():
            check_domain_name(name)
            if value not in (1, 3, 4) or isinstance(value, bool):
                raise ValueError(f"data.channels.{name}: use 1, 3 or 4 (got {value!r})")
        return self

    def of(self, domain: str) -> int:
        """The channel count of `domain` (3 for a domain not listed)."""
        if domain in ("a", "b"):
            return getattr(self, domain)
        return int((self.__pydantic_extra__ or {}).get(domain, 3))

    def named(self) -> list[str]:
        """The domains listed, ``a`` and ``b`` first."""
        return ["a", "b", *(self.__pydantic_extra__ or {})]


class ValConfig(BaseModel):
    """``data.val``: a folder per domain (``a``, ``b`` and any other domain of ``data.domains``), or
    ``pairs`` of side-by-side AB images (split like ``data.pairs``, ``data.direction`` saying which half
    is the input). Paired tasks match ``a`` and ``b`` by file name."""

    model_config = ConfigDict(extra="allow")
    a: Path | None = None
    b: Path | None = None
    pairs: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ValConfig:
        extra = self.__pydantic_extra__ or {}
        for name, value in list(extra.items()):
            check_domain_name(name)
            if not isinstance(value, (str, Path)):
                raise ValueError(f"data.val.{name}: a folder of images (got {value!r})")
            extra[name] = Path(value)
        if self.pairs is not None and (self.a is not None or self.b is not None or extra):
            raise ValueError("data.val.pairs holds both halves of each image; give it alone, without data.val.a/b")
        if self.pairs is None and self.a is None and not extra:
            raise ValueError("give data.val.a (and data.val.b), or data.val.pairs (side-by-side AB images)")
        return self

    def folders(self) -> dict[str, Path]:
        """The validation folder of each domain given."""
        named = {"a": self.a, "b": self.b, **(self.__pydantic_extra__ or {})}
        return {k: Path(v) for k, v in named.items() if v is not None}

    def folder(self, domain: str) -> Path | None:
        return self.folders().get(domain)


class DataConfig(StrictModel):
    a: Path | None = None
    b: Path | None = None
    domains: dict[str, Path] | None = None
    """The folder of each domain by name; ``data.a``/``data.b`` are the two-domain spelling of ``{a:, b:}``."""
    pairs: Path | None = None
    direction: Direction = "a2b"
    channels: Channels = Field(default_factory=Channels)
    transforms: list[dict[str, Any]] = Field(default_factory=list)
    input_transforms: list[dict[str, Any]] = Field(default_factory=list)
    test_a: Path | None = None
    test_b: Path | None = None
    test: dict[str, Path] | None = None
    """Test folders of further domains by name (``data.test_a``/``data.test_b`` hold a's and b's)."""
    val: ValConfig | None = None
    synthesize: str | None = None
    skip_unreadable: bool = False
    num_workers: int = Field(2, ge=0)

    @field_validator("domains")
    @classmethod
    def _domain_names(cls, value: dict[str, Path] | None) -> dict[str, Path] | None:
        if value is not None:
            for name in value:
                check_domain_name(name)
        return value

    @field_validator("channels", mode="before")
    @classmethod
    def _one_number_for_all(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            names = list((info.data.get("domains") or {}))
            return {name: value for name in ["a", "b", *names]}
        return value

    def domain_folders(self) -> dict[str, Path | None]:
        """The folder of each domain: ``data.domains``, or ``{a: data.a, b: data.b}``."""
        return dict(self.domains) if self.domains is not None else {"a": self.a, "b": self.b}

    def folder(self, domain: str) -> Path | None:
        return self.domain_folders().get(domain)

    def test_folder(self, domain: str) -> Path | None:
        """The test folder of `domain` (``data.test_a``/``test_b``, or ``data.test.<domain>``)."""
        if domain in ("a", "b") and getattr(self, f"test_{domain}") is not None:
            return getattr(self, f"test_{domain}")
        return (self.test or {}).get(domain)

    def test_path(self, domain: str) -> str:
        return f"data.test_{domain}" if domain in ("a", "b") else f"data.test.{domain}"

    def domain_path(self, domain: str) -> str:
        """The YAML path of a domain's folder: ``data.domains.c`` or ``data.a``."""
        return f"data.domains.{domain}" if self.domains is not None else f"data.{domain}"


class TrainConfig(StrictModel):
    @field_validator("val_extractor", mode="before")
    @classmethod
    def _extractor_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    epochs: int = Field(100, ge=0)
    decay_epochs: int = Field(100, ge=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    lr_d: float | None = Field(None, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    betas_d: tuple[float, float] | None = None
    pool_size: int = Field(50, ge=0)
    device: str = "auto"
    precision: str = "fp32"
    """fp32, bf16-mixed (or bf16), fp16-mixed (or fp16), or auto: bf16 only where this machine runs it faster."""
    channels_last: bool = False
    compile: bool = False
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(3, ge=0)
    tensorboard: bool = False
    on_nan: Literal["stop", "skip"] = "stop"
    ema: float | None = Field(None, gt=0, lt=1)
    val_every: int | None = Field(None, ge=1)
    val_metric: str | None = Field(None, min_length=1)  # one of the task's val_metrics(); checked by the task
    val_extractor: ExtractorSpec | None = None  # kid/fid only; default: the task's val_extractor_default()
    val_protocol: Literal["torch", "legacy_pytorch", "legacy_tensorflow", "clean"] | None = None  # kid/fid only;
    # default: the extractor's own (img2img/evaluation/distribution.py)
    samples: int = Field(4, ge=1, le=16)
    # training health (img2img/engine/health.py, docs/health.md)
    health: HealthMode = "warn"
    health_thresholds: HealthThresholds = Field(default_factory=HealthThresholds)


    @field_validator("ema", mode="before")
    @classmethod
    def _ema_is_a_decay(cls, value: Any) -> Any:
        if value is False:
            return None  # `ema: false` reads as "no EMA"
        if value is True:
            raise ValueError("give the decay of the moving average, a number between 0 and 1 such as 0.999 (true "
                             "is not a decay); null or false turns EMA off")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_name(cls, value: Any) -> str:
        from img2img.errors import Img2ImgError
        from img2img.precision import pipeline_name

        try:
            return pipeline_name(value)
        except Img2ImgError:
            raise ValueError("use fp32, bf16-mixed (or bf16), fp16-mixed (or fp16), or auto") from None

class PipelineBase(StrictModel):
    """Fields every task shares; a task's `Pipeline` subclasses it with its `model` and `losses`."""

    task: str
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    _origin: Any = PrivateAttr(default=None)
    """Where the pipeline came from (set by `validate_pipeline`), so that problems found later are
    reported under the same header, with the same lines and ``(--set)`` marks."""


PATH_FIELDS = ("a", "b", "pairs", "test_a", "test_b")

