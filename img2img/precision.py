"""Precision: one vocabulary for pipelines and translate, mixed-precision arithmetic, and ``auto``.

``train.precision`` and ``translate --precision`` take the same names: ``fp32``, ``bf16`` (also
spelt ``bf16-mixed``), ``fp16`` (``fp16-mixed``) and ``auto``. Both run the model under autocast,
so weights stay float32; a pipeline records the ``-mixed`` spelling. ``auto`` picks bf16 only where
this machine runs bf16 convolutions faster than fp32: on CUDA when the GPU supports bf16, on a CPU
after a short probe whose result is cached per CPU model, torch version and thread count.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from img2img.errors import Img2ImgError

KINDS = ("fp32", "bf16", "fp16", "auto")
_ALIASES = {
    "fp32": "fp32", "32": "fp32", "float32": "fp32", "32-true": "fp32",
    "bf16": "bf16", "bf16-mixed": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "fp16-mixed": "fp16", "16-mixed": "fp16", "float16": "fp16",
    "auto": "auto",
}
PIPELINE_NAMES = {"fp32": "fp32", "bf16": "bf16-mixed", "fp16": "fp16-mixed", "auto": "auto"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse(value: object, *, option: str = "--precision") -> str:
    """``fp32``, ``bf16``, ``fp16`` or ``auto`` from any accepted spelling; `option` names the source."""
    kind = _ALIASES.get(str(value).strip().lower()) if value is not None else None
    if kind is None:
        raise Img2ImgError(f"{option} {value!r}: use fp32, bf16 (or bf16-mixed), fp16 (or fp16-mixed) or auto")
    return kind


def pipeline_name(value: object) -> str:
    """The spelling a pipeline records: ``fp32``, ``bf16-mixed``, ``fp16-mixed`` or ``auto``."""
    return PIPELINE_NAMES[parse(value, option="train.precision")]


def resolve(value: object, device: torch.device, *, option: str = "--precision") -> str:
    """A concrete precision (``fp32``/``bf16``/``fp16``) for `device`; ``auto`` is decided here."""
    kind = parse(value, option=option)
    if kind != "auto":
        return kind
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_pays() else "fp32"
    return "fp32"


# ---------------------------------------------------------------------------------------------
# the CPU probe


def _cache_file() -> Path:
    root = os.environ.get("IMG2IMG_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "img2img" / "precision.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _probe_key() -> str:
    return f"{_cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def probe_conv_speed(repeats: int = 5) -> dict[str, float]:
    """Seconds per 3x3 convolution (256 channels, 64x64, the body of a ResNet generator) in fp32 and
    under bf16 autocast, the median of `repeats` alternating runs after a warm-up."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    x = torch.randn(1, 256, 64, 64)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.inference_mode():
        for i in range(repeats + 1):
            for kind in ("fp32", "bf16"):
                context = torch.autocast("cpu", dtype=torch.bfloat16) if kind == "bf16" else contextlib.nullcontext()
                start = time.perf_counter()
                with context:
                    conv(x)
                if i:  # the first round warms up both kernels
                    times[kind].append(time.perf_counter() - start)
    return {kind: sorted(values)[len(values) // 2] for kind, values in times.items()}


def cpu_bf16_pays() -> bool:
    """Whether bf16 convolutions beat fp32 on this CPU by a clear margin (10%); probed once, cached."""
    key = _probe_key()
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key) if isinstance(cache, dict) else None
    if not (isinstance(entry, dict) and isinstance(entry.get("fp32"), float) and isinstance(entry.get("bf16"), float)):
        entry = probe_conv_speed()
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = entry
        try:
            from img2img import atomic

            atomic.write_text(path, json.dumps(cache, indent=2) + "\n")
        except OSError:
            pass  # an unwritable cache only costs the probe next time
    return entry["bf16"] < 0.9 * entry["fp32"]


# ---------------------------------------------------------------------------------------------
# arithmetic


class Precision:
    """Autocast and gradient scaling for one precision (``fp32``, ``bf16[-mixed]``, ``fp16[-mixed]``).

    fp16 scales the loss (GradScaler); a step whose every update was skipped (a non-finite loss under
    ``train.on_nan: skip``) leaves the scale as it was instead of failing in ``update()``.
    """

    def __init__(self, precision: str, device: torch.device) -> None:
        self.device = torch.device(device)
        self.kind = resolve(precision, self.device, option="train.precision")
        self.name = PIPELINE_NAMES[self.kind]
        self.dtype = DTYPES.get(self.kind)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.kind == "fp16" else None
        self._stepped = False

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self._stepped = True
        else:
            optimizer.step()

    def update(self) -> None:
        if self.scaler is not None and self._stepped:
            self.scaler.update()
        self._stepped = False

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
