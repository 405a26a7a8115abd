"""Other projects' generator checkpoints as img2img runs (``img2img import reference|cut``).

`statedict` reads a ``.pth`` safely, `layouts` knows the reference repositories' module structures
and reads the architecture from the keys, `mapping` pairs their layers with ours, `convert` turns one
file into our generator's weights and `run` writes the run folder.
"""
from img2img.importing.convert import Converted, Flags, convert, generator_spec
from img2img.importing.layouts import ARCHS, Detected, detect
from img2img.importing.run import ImportResult, import_checkpoints
from img2img.importing.statedict import StateFile, read_state_file

__all__ = ["ARCHS", "Converted", "Detected", "Flags", "ImportResult", "StateFile", "convert", "detect",
           "generator_spec", "import_checkpoints", "read_state_file"]
