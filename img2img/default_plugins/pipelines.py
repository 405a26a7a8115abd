"""The built-in pipelines (``img2img/pipelines/*.yaml``, shipped as package data), registered by name."""
from pathlib import Path

from img2img.hookspecs import hookimpl

FOLDER = Path(__file__).resolve().parent.parent / "pipelines"


@hookimpl
def register_pipelines(register):
    for path in sorted(FOLDER.glob("*.yaml")):
        register(path.stem, path)
