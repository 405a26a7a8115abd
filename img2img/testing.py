"""pytest helpers for plugin authors: register a plugin for one test, make images, train a few steps.

Use them directly, or as fixtures by adding ``pytest_plugins = ["img2img.testing"]`` to a conftest::

    from img2img.testing import registered, tiny_pipeline, train_steps, write_images

    def test_my_generator_trains(tmp_path):
        import img2img_mything
        with registered(img2img_mything):
            pipeline = tiny_pipeline(tmp_path, generator={"name": "my_gen", "width": 8})
            run = train_steps(pipeline, steps=2)
            assert (run / "checkpoints" / "last.pt").is_file()

Everything runs on the CPU with tiny networks and images made on the spot: nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = ["img2img_plugin", "registered", "tiny_pipeline", "train_steps", "write_images", "write_pairs"]


@contextlib.contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[object]:
    """Register a plugin module or object (with ``@img2img.hookimpl`` functions) for the block only.

    Its components are available by name inside the block and gone after it, whatever happens.
    """
    from img2img import plugins

    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    pm = plugins.get_plugin_manager()
    if pm.is_registered(plugin):  # installed already (through its entry point): nothing to undo
        yield plugin
        return
    plugins.register_plugin(plugin, name)
    try:
        yield plugin
    finally:
        plugins.unregister_plugin(plugin)


def write_images(folder: Path, count: int = 6, size: int = 32, *, seed: int = 0,
                 colour: tuple[int, int, int] = (200, 80, 40), mode: str = "RGB", suffix: str = ".png",
                 prefix: str = "img") -> list[Path]:
    """`count` small tinted noise images (``size`` x ``size``), so that two folders look like two domains."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        noise = rng.integers(0, 60, (size, size, 3))
        arr = np.clip(np.array(colour)[None, None, :] + noise - 30, 0, 255).astype(np.uint8)
        path = folder / f"{prefix}{i:03d}{suffix}"
        Image.fromarray(arr).convert(mode).save(path)
        paths.append(path)
    return paths


def write_pairs(inputs: Path, targets: Path, count: int = 6, size: int = 32, *, seed: int = 0) -> list[Path]:
    """Paired folders for paired tasks: each target is its input inverted, under the same file name."""
    from PIL import Image

    made = write_images(inputs, count, size, seed=seed)
    Path(targets).mkdir(parents=True, exist_ok=True)
    for path in made:
        Image.fromarray(255 - np.asarray(Image.open(path))).save(Path(targets) / path.name)
    return made


_TINY_MODELS: dict[str, dict[str, Any]] = {
    "cyclegan": {"generator": {"name": "resnet_6blocks", "ngf": 8},
                 "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 2}},
    "pix2pix": {"generator": {"name": "unet", "num_downs": 5, "ngf": 8},
                "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 2, "norm": "batch"}},
    "cut": {"generator": {"name": "resnet_6blocks", "ngf": 8},
            "discriminator": {"name": "patchgan", "ndf": 8, "n_layers": 2}},
}


def tiny_pipeline(root: Path, task: str = "cyclegan", *, paired: bool | None = None, size: int = 32,
                  count: int = 6, name: str = "tiny", **sections: Any) -> Path:
    """Write ``root/pipeline.yaml`` for `task` over image folders made under `root`, with tiny networks.

    Keyword arguments replace or extend sections: ``generator=``/``discriminator=`` set ``model.*``,
    ``model=``, ``losses=``, ``train=``, ``data=`` (merged into what is made here) and any other
    top-level key of the task's pipeline. Returns the YAML file's path.
    """
    from img2img.registry import get_registry

    root = Path(root)
    if paired is None:
        paired = get_registry().get("task", task).factory.data_kind == "paired"
    if paired:
        write_pairs(root / "A", root / "B", count, size + 8, seed=1)
    else:
        write_images(root / "A", count, size + 8, seed=1, colour=(220, 120, 60))
        write_images(root / "B", count, size + 8, seed=2, colour=(40, 90, 200))
    model = dict(_TINY_MODELS.get(task, {}))
    for key in ("generator", "discriminator"):
        if key in sections:
            model[key] = sections.pop(key)
    pipeline: dict[str, Any] = {
        "task": task, "name": name, "seed": 0,
        "data": {"a": str(root / "A"), "b": str(root / "B"), "num_workers": 0,
                 "transforms": [{"RandomCrop": {"height": size, "width": size}}]},
        "train": {"max_steps": 2, "log_every": 1, "sample_every": 2, "checkpoint_every": 2},
    }
    if model:
        pipeline["model"] = model
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(pipeline.get(key), dict):
            pipeline[key] = {**pipeline[key], **value}
        else:
            pipeline[key] = value
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False), encoding="utf-8")
    return path


def train_steps(pipeline: Path, steps: int = 2, *, out: Path | None = None, overrides: list[str] | tuple = (),
                resume: bool = False) -> Path:
    """Train `steps` steps of a pipeline file (quietly) and return the run folder.

    With `resume`, continue the run in `out` up to `steps` in total instead.
    """
    from rich.console import Console

    from img2img.engine.train import train

    pipeline = Path(pipeline)
    out = Path(out) if out is not None else pipeline.parent / "run"
    console = Console(file=io.StringIO())
    settings = [*overrides, f"train.max_steps={steps}"]
    if resume:
        train(None, overrides=settings, resume=out, console=console)
    else:
        train(pipeline, overrides=settings, out=out, console=console)
    return out


try:  # fixtures, when pytest is there (``pytest_plugins = ["img2img.testing"]``)
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed to use the fixtures
    pytest = None

if pytest is not None:

    @pytest.fixture
    def img2img_plugin():
        """``img2img_plugin(obj)`` registers a plugin object for this test; removed afterwards."""
        with contextlib.ExitStack() as stack:
            yield lambda plugin, name=None: stack.enter_context(registered(plugin, name))
