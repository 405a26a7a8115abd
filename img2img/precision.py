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
BF16_MARGIN = 0.85
"""auto picks bf16 on a CPU only when 80% of probe pairs ran at most this fraction of fp32's time."""
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


def cache_dir() -> Path:
    """Where img2img keeps what it measured on this machine: ``$IMG2IMG_CACHE/img2img``, else
    ``$XDG_CACHE_HOME/img2img``, else ``~/.cache/img2img``."""
    root = os.environ.get("IMG2IMG_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "img2img"


def _cache_file() -> Path:
    return cache_dir() / "precision.json"


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


def probe_conv_speed(pairs: int = 6, rounds: int = 3, pause: float = 0.5) -> dict[str, float]:
    """Seconds of a 3x3 convolution's forward and backward (128 channels, 64x64: a ResNet generator's
    body) in fp32 and under bf16 autocast, alternated pair by pair after a warm-up. ``ratio`` is the
    median of the per-pair bf16/fp32 ratios and ``ratio_p80`` their 80th percentile: some CPUs run
    bf16 fast only some of the time (shared matrix units), and auto wants it fast nearly always, so the
    pairs come in `rounds` half a second apart."""
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(1, 128, 64, 64, generator=generator)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(pairs * rounds + 1):
        if i > 1 and (i - 1) % pairs == 0:
            time.sleep(pause)  # rounds apart: a state that comes and goes shows in the spread
        for kind in ("fp32", "bf16"):
            context = torch.autocast("cpu", dtype=torch.bfloat16) if kind == "bf16" else contextlib.nullcontext()
            start = time.perf_counter()
            with context:
                y = conv(x)
            y.float().square().mean().backward()
            elapsed = time.perf_counter() - start
            conv.zero_grad(set_to_none=True)
            if i:  # the first round warms up both kernels
                times[kind].append(elapsed)
    ratios = sorted(b / f for f, b in zip(times["fp32"], times["bf16"]))
    median = {kind: sorted(values)[len(values) // 2] for kind, values in times.items()}
    return {**median, "ratio": ratios[len(ratios) // 2], "ratio_p80": ratios[int(0.8 * (len(ratios) - 1))]}


def cpu_bf16_pays() -> bool:
    """Whether bf16 convolutions beat fp32 on this CPU by a clear margin (15%) in 4 of 5 trials;
    probed once, cached in
    ``~/.cache/img2img/precision.json`` (``IMG2IMG_CACHE`` moves it; delete it to probe again)."""
    key = _probe_key()
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key) if isinstance(cache, dict) else None
    if not (isinstance(entry, dict) and isinstance(entry.get("ratio_p80"), float)):
        entry = probe_conv_speed()
        cache = cache if isinstance(cache, dict) else {}
        cache[key] = entry
        try:
            from img2img import atomic

            atomic.write_text(path, json.dumps(cache, indent=2) + "\n")
        except OSError:
            pass  # an unwritable cache only costs the probe next time
    return entry["ratio_p80"] < BF16_MARGIN


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
