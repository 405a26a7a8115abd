"""Reading another project's generator checkpoint: a plain ``state_dict`` of tensors, safely.

``torch.load(weights_only=True)`` only: a file that carries pickled Python objects is refused and
nothing in it runs. The reference repositories save ``net.state_dict()`` (an ``OrderedDict`` of
tensors); a model wrapped in ``DataParallel`` adds ``module.`` to every key, which is removed here.
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from img2img.errors import Img2ImgError, first_line
from img2img.tensorfile import NotATorchFile, load_weights_only

MODULE_PREFIX = "module."
# where a state dict sits inside a dict that carries more than tensors (e.g. {"state_dict": ..., "epoch": 3})
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "netG", "generator", "G")


@dataclass
class StateFile:
    """One checkpoint file's tensors (keys without the ``module.`` prefix) and where they came from."""

    path: Path
    tensors: dict[str, torch.Tensor]
    sha256: str
    size: int
    prefix_stripped: str = ""
    nested_key: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def record(self) -> dict:
        """What the imported run keeps about this file."""
        return {"path": str(self.path.resolve()), "name": self.name, "sha256": self.sha256, "bytes": self.size,
                "keys": len(self.tensors), "module_prefix_removed": bool(self.prefix_stripped),
                **({"nested_under": self.nested_key} if self.nested_key else {})}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_file(path: Path) -> StateFile:
    """Load `path` as a state dict of tensors, or raise `Img2ImgError` naming the file and what it holds."""
    path = Path(path)
    if not path.exists():
        raise Img2ImgError(f"no such checkpoint file: {path}")
    if path.is_dir():
        raise Img2ImgError(f"{path} is a folder; give the generator's .pth file (e.g. {path / 'latest_net_G.pth'})")
    try:
        size = path.stat().st_size
        digest = sha256_of(path)
    except OSError as exc:
        raise Img2ImgError(f"cannot read {path} ({exc.strerror or exc})") from None
    if size == 0:
        raise Img2ImgError(f"{path} is empty (0 bytes), not a checkpoint; it may have been cut off while copying")
    try:
        obj = load_weights_only(path, REFUSAL_ADVICE)
    except NotATorchFile as exc:
        raise Img2ImgError(f"{path} is not a PyTorch checkpoint: it is {exc.kind}; give the generator's "
                           "latest_net_G*.pth file") from None
    except Img2ImgError:
        raise
    except Exception as exc:  # the zip and pickle readers fail in many ways on a file of another kind
        detail = first_line(exc).split(". ")[0] if isinstance(exc, (RuntimeError, OSError, ValueError, EOFError)) \
            else "not a file torch.save wrote"
        if _looks_truncated(path, exc):
            raise Img2ImgError(f"{path} is truncated ({size} bytes, its end is missing: {detail}); it was cut off "
                               "while saving, downloading or copying. Get the complete file again.") from None
        raise Img2ImgError(f"{path} is not a PyTorch checkpoint that torch.load can read ({detail}); give the "
                           "generator's latest_net_G*.pth file") from None
    tensors, nested = _tensors_of(obj, path)
    state = StateFile(path=path, tensors=tensors, sha256=digest, size=size, nested_key=nested)
    keys = list(tensors)
    if keys and all(k.startswith(MODULE_PREFIX) for k in keys):  # saved from a DataParallel wrapper
        state.tensors = {k[len(MODULE_PREFIX):]: v for k, v in tensors.items()}
        state.prefix_stripped = MODULE_PREFIX
        state.notes.append("removed the 'module.' prefix of a DataParallel model")
    return state


def _looks_truncated(path: Path, exc: Exception) -> bool:
    """A zip checkpoint (torch >= 1.6) without its central directory, or an old-format one that ends early."""
    if isinstance(exc, EOFError) or "unexpected EOF" in str(exc) or "Ran out of input" in str(exc):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def _tensors_of(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(obj, dict) and "pipeline" in obj and "nets" in obj:
        raise Img2ImgError(f"{path} is already an img2img checkpoint; use it as it is: "
                           f"`img2img translate IMAGES --model {path} --out OUT`")
    if not isinstance(obj, dict):
        raise Img2ImgError(f"{path} is not a generator checkpoint: it holds a {type(obj).__name__}, not a "
                           "state dict (the mapping of layer names to tensors that torch.save(net.state_dict()) writes)")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}, ""
    for key in NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return {str(k): v for k, v in inner.items()}, key
    if not obj:
        raise Img2ImgError(f"{path} holds an empty mapping, not a generator's weights")
    others = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)][:3]
    inner = [str(k) for k, v in obj.items()
             if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values())]
    hint = ""
    if inner:  # e.g. a training state {"netG_A": ..., "optimizer_G": ..., "epoch": ...}
        hint = (f" Its entr{'y' if len(inner) == 1 else 'ies'} {', '.join(repr(k) for k in inner[:4])} "
                f"{'holds a state dict' if len(inner) == 1 else 'hold state dicts'}; save the generator's alone and import that: "
                f"torch.save(torch.load({str(path)!r})[{inner[0]!r}], 'latest_net_G.pth').")
    raise Img2ImgError(f"{path} is not a generator checkpoint: besides tensors it holds {', '.join(others)}; "
                       "give the file that torch.save(net.state_dict()) wrote for the generator "
                       f"(latest_net_G*.pth).{hint}")


REFUSAL_ADVICE = ("A generator checkpoint holds only tensors (torch.save(net.state_dict())); if you trust the "
                  "file's origin, load it yourself and save net.state_dict() from it.")
