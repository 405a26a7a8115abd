"""``--backend auto`` and ``--backend openvino --precision auto``: the fastest way to run a model on this
machine among those that agree with float32.

The candidates (torch fp32/bf16, OpenVINO fp32/bf16 for a run; onnxruntime and OpenVINO for an ONNX
file) each translate one photo-like probe image; a candidate counts only when it agrees with the
reference (torch fp32 for a run, the file in onnxruntime for ONNX) within `AGREEMENT`, and the fastest
of those wins. The result is measured once per machine and model shape and kept in
``<cache>/img2img/backends.json`` (see `img2img.precision.cache_dir`; delete the file to measure again).
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2img import atomic
from img2img import precision as precisions
from img2img.errors import Img2ImgError

AGREEMENT = {"fp32": (0.5, 3.0), "bf16": (2.0, None), "int8": (4.0, None), "fp16": (2.0, None)}
"""Per arithmetic: the largest mean and max absolute difference from the reference, in 1/255 steps."""
PROBE = (128, 160)
"""Height and width of the probe image: small enough to measure in seconds, large enough to time."""
ROUNDS = 3


@dataclass
class Candidate:
    """One way to run the model: `name` as printed (``openvino bf16``), its arithmetic, and how to build it."""

    name: str
    arithmetic: str
    build: Callable[[], Any]


def cache_file() -> Path:
    return precisions.cache_dir() / "backends.json"


def probe_image(channels: int, seed: int = 0) -> torch.Tensor:
    """1xCxHxW in [-1, 1]: smooth colour areas with a little noise, as a photo is to a generator."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(-0.9, 0.9, (1, channels, 6, 7)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=PROBE, mode="bicubic", align_corners=False)
    noise = torch.from_numpy(rng.normal(0, 0.06, (1, channels, *PROBE)).astype(np.float32))
    return (smooth + noise).clamp(-1, 1)


def difference(output: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Mean and max absolute difference of two [-1, 1] outputs, in 1/255 steps of the [0, 1] image."""
    diff = (output.float() - reference.float()).abs() * 127.5
    return float(diff.mean()), float(diff.max())


def agrees(arithmetic: str, mean: float, worst: float) -> bool:
    mean_limit, max_limit = AGREEMENT.get(arithmetic, AGREEMENT["fp32"])
    return mean <= mean_limit and (max_limit is None or worst <= max_limit)


def machine_key() -> str:
    versions = [f"torch {torch.__version__}"]
    for module in ("openvino", "onnxruntime"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            pass
    return f"{precisions._cpu_name()} | {platform.machine()} | {torch.get_num_threads()} threads | {', '.join(versions)}"


def module_shape(module: torch.nn.Module) -> str:
    """The architecture of a module, not its weights: its class and every parameter's and buffer's shape."""
    text = type(module).__name__ + ";" + ";".join(f"{k}:{tuple(v.shape)}" for k, v in module.state_dict().items())
    return "torch " + hashlib.sha256(text.encode()).hexdigest()[:16]


def file_shape(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "onnx " + digest.hexdigest()[:16]


def _time(backend: Any, x: torch.Tensor) -> float:
    start = time.perf_counter()
    backend(x)
    return time.perf_counter() - start


def measure(reference: Candidate, candidates: list[Candidate],
            channels: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Seconds, speed-up over the reference and agreement of every candidate that builds on this machine
    (and the built backends); the candidates alternate `ROUNDS` times after a warm-up and keep their
    best round."""
    x = probe_image(channels)
    built: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    ref_backend = reference.build()
    expected = ref_backend(x)
    for candidate in candidates:
        if candidate.name == reference.name:
            built[candidate.name] = ref_backend
            continue
        try:
            built[candidate.name] = candidate.build()
        except Img2ImgError as exc:  # e.g. bf16 on a CPU without it
            results[candidate.name] = {"available": False, "reason": str(exc)}
    outputs = {name: backend(x) for name, backend in built.items()}  # warm-up, and the outputs compared
    times: dict[str, list[float]] = {name: [] for name in [reference.name, *built]}
    for _ in range(ROUNDS):
        for name in times:
            times[name].append(_time(built.get(name, ref_backend), x))
    base = min(times[reference.name])
    by_name = {c.name: c for c in candidates}
    for name, output in outputs.items():
        mean, worst = difference(output, expected)
        seconds = min(times[name])
        results[name] = {"available": True, "seconds": round(seconds, 5), "speedup": round(base / seconds, 3),
                         "mean_diff": round(mean, 4), "max_diff": round(worst, 4),
                         "agrees": agrees(by_name[name].arithmetic, mean, worst)}
    return results, built


def choose(reference: Candidate, candidates: list[Candidate], *, channels: int, shape: str,
           wanted: str) -> tuple[Any, str, list[str]]:
    """The fastest agreeing candidate's backend, a short description of the choice and notes to print.

    `shape` names the model's architecture and `wanted` the choices offered (``backend auto, precision
    fp32``); both are part of the cache key with this machine's.
    """
    if not candidates:
        raise Img2ImgError(f"{wanted}: no backend runs that precision natively on this machine (bf16 needs "
                           "AVX512-BF16 or AMX); use --precision fp32 or auto")
    key = f"{machine_key()} | {shape} | {wanted}"
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    entry = cache.get(key)
    by_name = {c.name: c for c in candidates}
    built: dict[str, Any] = {}
    if not (isinstance(entry, dict) and entry.get("choice") in by_name and isinstance(entry.get("measured"), dict)):
        measured, built = measure(reference, candidates, channels)
        agreeing = [n for n, r in measured.items() if r.get("available") and r.get("agrees")]
        if not agreeing:
            raise Img2ImgError(f"{wanted}: no candidate agrees with {reference.name} on this model ("
                               + "; ".join(f"{n}: mean {r['mean_diff']:.2f}/255" for n, r in measured.items()
                                           if r.get("available")) + "); choose --backend and --precision yourself")
        best = max(agreeing, key=lambda n: measured[n]["speedup"])
        entry = {"choice": best, "reference": reference.name, "probe": f"1x{channels}x{PROBE[0]}x{PROBE[1]}",
                 "measured": measured, "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        cache[key] = entry
        try:
            atomic.write_text(path, json.dumps(cache, indent=2) + "\n")
        except OSError:
            pass  # an unwritable cache only costs the measurement next time
    best = entry["choice"]
    row = entry["measured"][best]
    choice = f"auto: {row['speedup']:.2f}x {entry['reference']}"
    others = ", ".join(f"{n} {r['speedup']:.2f}x" + ("" if r.get("agrees") else " (disagrees)")
                       for n, r in entry["measured"].items() if r.get("available") and n != best)
    note = (f"{wanted} chose {best}: {row['speedup']:.2f}x the images/s of {entry['reference']} on a "
            f"{entry['probe']} probe, {row['mean_diff']:.2f}/255 mean and {row['max_diff']:.2f}/255 max difference"
            + (f" (others: {others})" if others else "")
            + (f"; measured now and recorded in {path}" if built else f"; measured {entry.get('when', '')}, "
               f"recorded in {path} (delete it to measure again)"))
    backend = built[best] if best in built else by_name[best].build()
    return backend, choice, [note]
