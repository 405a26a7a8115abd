"""`img2img import`: other projects' generator checkpoints -> an img2img run folder.

The run is an ordinary cyclegan (``G_A`` translates a2b, ``G_B`` b2a), pix2pix (a2b) or cut run
holding translators only: ``pipeline.yaml``, ``plugins.json``, ``checkpoints/last.pt`` and
``source.json`` (the files, their sha256, what their keys said). translate, export, evaluate and serve
use it like a trained run; ``--resume`` refuses it (no optimiser state). A pipeline requires
training folders, so ``data.a``/``data.b`` hold placeholders that say there are none; nothing that
uses a generator reads them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from img2img._version import __version__
from img2img.errors import Img2ImgError
from img2img.importing.convert import Converted, Flags, convert
from img2img.importing.statedict import read_state_file

ORIGINS = {"reference": "junyanz/pytorch-CycleGAN-and-pix2pix", "cut": "taesungp/contrastive-unpaired-translation"}
TASKS = ("cyclegan", "pix2pix")
NET_KEYS = {("cyclegan", "a2b"): "g_ab", ("cyclegan", "b2a"): "g_ba", ("pix2pix", "a2b"): "g", ("cut", "a2b"): "g_ab"}
NO_DATA = "(no training data: imported from {files})"


@dataclass
class ImportResult:
    """What `import_checkpoints` wrote."""

    run_dir: Path
    checkpoint: Path
    task: str
    name: str
    generator: dict[str, Any]
    files: list[tuple[str, Converted]]  # (direction, converted file)

    @property
    def directions(self) -> list[str]:
        return [d for d, _ in self.files]


def _tag(path: Path) -> str | None:
    """a2b for a file named like ``latest_net_G_A.pth``, b2a for ``..._G_B...``, else None."""
    found = re.search(r"(?:^|[^A-Za-z0-9])G_([AB])(?:[^A-Za-z0-9]|$)", path.name)
    return None if found is None else ("a2b" if found.group(1) == "A" else "b2a")


def assign_directions(files: list[Path], direction: str | None) -> list[str]:
    """The direction each file translates: ``G_A`` a2b, ``G_B`` b2a (by name, else the order given)."""
    if direction is not None and direction not in ("a2b", "b2a"):
        raise Img2ImgError(f"--direction {direction}: use a2b or b2a")
    if len(files) == 1:
        return [direction or _tag(files[0]) or "a2b"]
    if direction is not None:
        raise Img2ImgError("--direction applies to a single file; with two, G_A translates a2b and G_B b2a")
    tags = [_tag(p) for p in files]
    if tags == [None, None]:
        return ["a2b", "b2a"]
    if sorted(t or "" for t in tags) == ["a2b", "b2a"]:
        return [t for t in tags]  # type: ignore[misc]
    known = [t for t in tags if t]
    if len(known) == 1:
        return [t or ("b2a" if known[0] == "a2b" else "a2b") for t in tags]
    raise Img2ImgError(f"{files[0].name} and {files[1].name} both translate {tags[0]}; give one G_A (a2b) and one "
                       "G_B (b2a) file")


def parse_channels(text: str | None) -> tuple[int | None, int | None]:
    """``3`` -> (3, 3); ``1,3`` -> domain A 1 channel, domain B 3."""
    if text is None:
        return None, None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) in (1, 2) and all(p in ("1", "3", "4") for p in parts):
        a = int(parts[0])
        return a, int(parts[-1])
    raise Img2ImgError(f"--channels {text}: give the image channels of A and B, each 1, 3 or 4 (e.g. 3, or 1,3)")


def choose_task(kind: str, task: str | None, converted: list[tuple[str, Converted]]) -> str:
    if kind == "cut":
        if task not in (None, "cut"):
            raise Img2ImgError(f"--task {task}: `img2img import cut` makes a cut run; use `img2img import reference` "
                               "for cyclegan or pix2pix")
        return "cut"
    if task is not None and task not in TASKS:
        raise Img2ImgError(f"--task {task}: use cyclegan or pix2pix")
    if task is None:
        only = converted[0][1]
        task = "pix2pix" if len(converted) == 1 and only.detected.family == "unet" \
            and _tag(only.state.path) is None else "cyclegan"
    if task == "pix2pix":
        if len(converted) > 1:
            raise Img2ImgError("a pix2pix run has one generator; import one file (latest_net_G.pth), or two with "
                               "--task cyclegan")
        if converted[0][0] != "a2b":
            raise Img2ImgError(f"a pix2pix run translates a2b only, but {converted[0][1].state.name} was assigned "
                               "b2a; leave out --direction b2a or use --task cyclegan")
    return task


def _domain_channels(converted: list[tuple[str, Converted]]) -> tuple[int, int]:
    """Channels of A and B images from each file's in and out channels; they must agree."""
    seen: dict[str, tuple[int, str]] = {}
    for direction, conv in converted:
        src, dst = ("a", "b") if direction == "a2b" else ("b", "a")
        for domain, value in ((src, conv.in_channels), (dst, conv.out_channels)):
            if domain in seen and seen[domain][0] != value:
                raise Img2ImgError(f"{conv.state.name} has {value} channels for domain {domain.upper()} but "
                                   f"{seen[domain][1]} has {seen[domain][0]}; the two generators are not a pair")
            seen.setdefault(domain, (value, conv.state.name))
    channels = (seen.get("a", (3, ""))[0], seen.get("b", (3, ""))[0])
    bad = [c for c in channels if c not in (1, 3, 4)]
    if bad:
        raise Img2ImgError(f"the generator works on {bad[0]}-channel images; img2img reads images with 1, 3 or 4")
    return channels


def _run_name(name: str | None, out: Path) -> str:
    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise Img2ImgError(f"--name {name!r}: use letters, digits, '_', '.' and '-' (starting with a letter or "
                               "digit)")
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", out.resolve().name).strip("-._")
    return cleaned or "imported"


def _check_out(out: Path, overwrite: bool, files: list[Path] = ()) -> None:
    for path in files:  # --overwrite replaces the whole folder: an input inside it would be deleted
        if out.exists() and path.resolve().is_relative_to(out.resolve()):
            raise Img2ImgError(f"--out {out} contains the input {path}; replacing the run would delete the file being "
                               f"imported. Choose another --out (e.g. {out.parent / (out.name + '-imported')}) or "
                               "move the input out of it first")
    if out.exists() and not out.is_dir():
        raise Img2ImgError(f"--out {out} is a file; give a folder for the imported run")
    if out.is_dir() and any(out.iterdir()):
        is_run = (out / "pipeline.yaml").exists() or (out / "checkpoints").exists()
        if not is_run:
            raise Img2ImgError(f"{out} exists and is not an img2img run folder; choose another --out")
        if not overwrite:
            raise Img2ImgError(f"{out} already holds a run; choose another --out, or add --overwrite to replace it")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def import_checkpoints(kind: str, files: list[Path], out: Path, *, arch: str | None = None, ngf: int | None = None,
                       norm: str | None = None, dropout: bool | None = None, channels: str | None = None,
                       direction: str | None = None, task: str | None = None, name: str | None = None,
                       overwrite: bool = False) -> ImportResult:
    """Convert `files` (``latest_net_G*.pth``) into a run folder at `out`; see the module docstring."""
    from img2img.config import validate_pipeline
    from img2img.engine.checkpoint import load_generator, save_inference_checkpoint
    from img2img.registry import get_registry

    if kind not in ORIGINS:
        raise Img2ImgError(f"unknown import kind {kind!r}; use reference or cut")
    files = [Path(f) for f in files]
    if not files or len(files) > (1 if kind == "cut" else 2):
        raise Img2ImgError("give one generator file (latest_net_G.pth)" if kind == "cut" else
                           "give one generator file (latest_net_G.pth) or two (latest_net_G_A.pth latest_net_G_B.pth)")
    if kind == "cut" and not get_registry().has("task", "cut"):
        raise Img2ImgError("a CUT run needs the cut task from the img2img-cut plugin: pip install img2img-cut")
    out = Path(out)
    _check_out(out, overwrite, files)
    flags = Flags(arch=arch, ngf=ngf, norm=norm, dropout=dropout)
    a_ch, b_ch = parse_channels(channels)
    directions = assign_directions(files, direction)
    converted: list[tuple[str, Converted]] = []
    for path, d in zip(files, directions):
        io = (a_ch, b_ch) if d == "a2b" else (b_ch, a_ch)
        converted.append((d, convert(read_state_file(path), flags, channels=io)))
    if kind == "cut" and converted[0][1].detected.family != "resnet":
        raise Img2ImgError(f"{files[0]} is a U-Net; `img2img import cut` reads CUT's ResNet generators. Import it "
                           "with `img2img import reference`.")
    task = choose_task(kind, task, converted)
    specs = {json.dumps(c.spec, sort_keys=True) for _, c in converted}
    if len(specs) > 1:
        (_, first), (_, second) = converted
        raise Img2ImgError(f"{first.state.name} is {first.spec} but {second.state.name} is {second.spec}; a cyclegan "
                           "run has one generator architecture for both directions. Import them into two runs.")
    spec = converted[0][1].spec
    ch_a, ch_b = _domain_channels(converted)
    placeholder = NO_DATA.format(files=", ".join(c.state.name for _, c in converted))
    raw = {"task": task, "name": _run_name(name, out),
           "data": {"a": f"{placeholder}/A", "b": f"{placeholder}/B", "channels": {"a": ch_a, "b": ch_b}},
           "model": {"generator": dict(spec)}}
    if ch_a != ch_b:  # the terms that translate the other domain's images need equal channels, as in the originals
        if task == "cyclegan":
            raw["losses"] = {"identity": {"name": "l1", "weight": 0.0}}
        elif task == "cut":
            raw["nce"] = {"identity": False}
    pipeline = validate_pipeline(raw, source=f"the pipeline for {', '.join(str(f) for f in files)}")
    source = {
        "importer": f"img2img import {kind}", "img2img_version": __version__, "origin": ORIGINS[kind],
        "task": task, "generator": spec, "flags": {**flags.given(), **({"channels": channels} if channels else {})},
        "files": [{**c.state.record(), "direction": d, "net": NET_KEYS[(task, d)], "detected": c.detected.record(),
                   "ignored_keys": c.mapping.ignored, "notes": c.notes} for d, c in converted],
    }
    nets = {NET_KEYS[(task, d)]: c.tensors for d, c in converted}
    translators = {d: NET_KEYS[(task, d)] for d, _ in converted}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".importing", dir=out.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's folder is private; a run folder is not
        save_inference_checkpoint(staging, pipeline=pipeline, nets=nets, translators=translators, source=source)
        (staging / "source.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        for d, _ in converted:  # the run must load the way translate and export load it
            load_generator(staging, d)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ImportResult(run_dir=out, checkpoint=out / "checkpoints" / "last.pt", task=task, name=pipeline.name,
                        generator=spec, files=converted)
