"""`train.health` and `train.health_thresholds`: when the training-health monitor speaks up.

The numbers are calibrated on runs that were made to fail and on runs that were healthy; see
docs/health.md for what each signal measures and the measurements behind these defaults.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _yaml_booleans(value: Any) -> Any:
    """YAML reads a bare ``off`` (or ``no``/``false``) as false: take it as ``off``, and true as ``warn``."""
    if isinstance(value, bool):
        return "warn" if value else "off"
    return value


HealthMode = Annotated[Literal["warn", "stop", "off"], BeforeValidator(_yaml_booleans)]


class HealthThresholds(BaseModel):
    """When a signal counts as a failure and for how long it must last before a warning."""

    model_config = ConfigDict(extra="forbid")  # as schema.StrictModel (which imports this module)

    every: int = Field(50, ge=1)
    """Steps between measurements on the fixed sample batch (taken on the first log row due)."""
    warmup: int = Field(200, ge=0)
    """Steps before anything is judged: early GAN training is noisy by nature."""
    patience: int = Field(200, ge=1)
    """Steps a condition must hold without a break before it is reported."""
    collapse_diversity: float = Field(0.1, gt=0, lt=1)
    """Mode collapse below this: output diversity over input (or target) diversity."""
    d_separation: float = Field(0.97, gt=0.5, le=1)
    """The discriminator wins above this fraction of (real, translated) patch pairs ranked right."""
    progress: float = Field(0.02, ge=0)
    """The generator counts as improving while its content losses fall by more than this fraction
    over `trend_window` steps; a winning discriminator is reported only when it is not."""
    swing: float = Field(0.3, gt=0)
    """Unstable convergence: the discriminator's loss goes up and down at least twice by more than this
    fraction of its level within `trend_window` steps (see docs/health.md)."""
    trend_window: int = Field(500, ge=10)
    """Steps over which the adversarial losses' trend and swing are measured."""
