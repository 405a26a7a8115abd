"""Files people download, crafted or malformed: each is refused before anything large is built, with
exit 1 and one message naming the file; never a traceback, never gigabytes of memory."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cli_support import flat, user_error
from img2img.cli import app
from img2img.testing import write_images
from reference_networks import ResnetGenerator

runner = CliRunner()
PEAK_RSS_LIMIT_KB = 1_500_000  # torch itself takes a few hundred MB; a built ngf-1024 resnet takes gigabytes


_MEASURED = """
import atexit, os, runpy, sys

def _peak():
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["IMG2IMG_TEST_PEAK_FILE"], "w") as out:
        out.write(kb)

atexit.register(_peak)
sys.argv[0] = "img2img"
runpy.run_module("img2img", run_name="__main__", alter_sys=True)
"""


def run_measured(*args: str) -> tuple[int, str, int]:
    """`python -m img2img ARGS` in a subprocess: (exit code, stderr + stdout, peak RSS in KB of that process).

    The peak is the process's own high-water mark (VmHWM of the memory it mapped after exec), written as
    it exits: the rusage of a child (wait4, RUSAGE_CHILDREN) also counts the RSS of the process it was
    forked from, a test worker that can itself hold well over a gigabyte.
    """
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        proc = subprocess.run([sys.executable, "-c", _MEASURED, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "COLUMNS": "400", "IMG2IMG_TEST_PEAK_FILE": str(peak_file)})
        return proc.returncode, proc.stdout, int(peak_file.read_text())


def assert_refused_within_memory(args: list[str], *needles: str) -> str:
    code, output, peak_kb = run_measured(*args)
    assert code == 1, output
    assert "Traceback" not in output and output.count("error:") == 1, output
    for needle in needles:
        assert needle in flat(output), f"{needle!r} not in {output}"
    assert peak_kb < PEAK_RSS_LIMIT_KB, f"peak RSS {peak_kb / 1e6:.2f} GB:\n{output}"
    return output


@pytest.fixture(scope="module")
def safetensors_export(translate_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("st") / "g.safetensors"
    result = runner.invoke(app, ["export", str(translate_run), "--out", str(out), "--format", "safetensors"])
    assert result.exit_code == 0, result.output
    return out


def rewritten_safetensors(source: Path, out: Path, change) -> Path:
    """`source` with its img2img description changed by `change(info) -> new description` (no sidecar)."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        info = json.loads(fh.metadata()["img2img"])
    save_file(tensors, str(out), metadata={"img2img": json.dumps(change(info))})
    return out


# -- item: crafted files that would allocate gigabytes -------------------------------------------------

def test_expanded_tensors_declaring_a_huge_resnet_are_refused_by_import(tmp_path):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ResnetGenerator(3, 3, 1024, "instance", False, 9).state_dict().items()}
    crafted = {k: torch.zeros(1).expand(*shape) if len(shape) else torch.zeros(()) for k, shape in shapes.items()}
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(crafted, path)
    assert path.stat().st_size < 100_000
    assert_refused_within_memory(["import", "reference", str(path), "--out", str(tmp_path / "run")],
                                 f"refused to load {path}", "expanded view")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_whose_pipeline_says_ngf_1024_is_refused_before_building(translate_run, tmp_path):
    state = torch.load(translate_run / "checkpoints" / "last.pt", weights_only=True)
    state["pipeline"]["model"]["generator"]["ngf"] = 1024
    path = tmp_path / "big.pt"
    torch.save(state, path)
    write_images(tmp_path / "in", 1, 16)
    assert_refused_within_memory(["translate", str(tmp_path / "in"), "--model", str(path), "--out",
                                  str(tmp_path / "out"), "--device", "cpu"],
                                 str(path), "do not fit the translator its pipeline describes", "wrong shape")


def test_a_safetensors_description_of_ten_million_channels_is_refused(safetensors_export, tmp_path):
    path = rewritten_safetensors(safetensors_export, tmp_path / "wide.safetensors",
                                 lambda info: {**info, "in_channels": 10**7})
    write_images(tmp_path / "in", 1, 16)
    assert_refused_within_memory(["translate", str(tmp_path / "in"), "--model", str(path), "--out",
                                  str(tmp_path / "out"), "--device", "cpu"],
                                 str(path), "does not fit", "10000000 -> 3 channels", "wrong shape")


def test_a_zip_record_that_inflates_is_refused(translate_run, tmp_path):
    import zipfile

    source = translate_run / "checkpoints" / "last.pt"
    path = tmp_path / "inflating.pt"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    result = runner.invoke(app, ["export", str(path), "--out", str(tmp_path / "g.onnx")])
    user_error(result, f"refused to load {path}", "is compressed")


# -- item: malformed files get one line, not a traceback ------------------------------------------------

def _truncated(good: bytes) -> bytes:
    return good[: len(good) // 2]


def _lying_header(good: bytes) -> bytes:
    """The header says the last tensor ends 1 MB later than the file does."""
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8:8 + n])
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    header[last]["data_offsets"][1] += 1_000_000
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + good[8 + n:]


@pytest.mark.parametrize("damage, expected", [
    ("garbage", "is not a readable safetensors file"),
    ("truncated", "is not a readable safetensors file"),
    ("lying-header", "is not a readable safetensors file"),
    ("no-generator", "no 'generator'"),
    ("json-list", "its description is a JSON list"),
    ("channels-text", "'in_channels' is \"abc\", not a positive whole number"),
])
def test_a_malformed_safetensors_file_is_one_line_naming_it(safetensors_export, tmp_path, damage, expected):
    path = tmp_path / "g.safetensors"
    good = safetensors_export.read_bytes()
    if damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        path.write_bytes(_truncated(good))
    elif damage == "lying-header":
        path.write_bytes(_lying_header(good))
    elif damage == "no-generator":
        rewritten_safetensors(safetensors_export, path, lambda info: {k: v for k, v in info.items() if k != "generator"})
    elif damage == "json-list":
        rewritten_safetensors(safetensors_export, path, lambda info: [info])
    else:
        rewritten_safetensors(safetensors_export, path, lambda info: {**info, "in_channels": "abc"})
    write_images(tmp_path / "in", 1, 16)
    result = runner.invoke(app, ["translate", str(tmp_path / "in"), "--model", str(path), "--out",
                                 str(tmp_path / "out"), "--device", "cpu"])
    out = user_error(result, str(path), expected)
    assert out.count("error:") == 1


@pytest.mark.parametrize("value, expected", [
    ("abc", "in_channels='abc' is not a positive whole number"),
    ("4", "its metadata says in_channels=4 but its graph's input has 3 channels"),
])
def test_onnx_metadata_that_lies_is_named_when_the_file_loads(translate_onnx, tmp_path, value, expected):
    model = onnx.load(str(translate_onnx))
    for prop in model.metadata_props:
        if prop.key == "in_channels":
            prop.value = value
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    write_images(tmp_path / "in", 1, 16)
    result = runner.invoke(app, ["translate", str(tmp_path / "in"), "--model", str(path), "--out",
                                 str(tmp_path / "out"), "--device", "cpu"])
    user_error(result, str(path), expected)


# -- item: torch's advice to unpickle is never repeated -------------------------------------------------

class Payload:
    """Unpickling this with plain pickle creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_feature_weights_with_a_pickled_object_are_refused_without_torchs_advice(tmp_path):
    write_images(tmp_path / "a", 2, 32, seed=1)
    evil, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    torch.save({"fc.weight": torch.zeros(2), "x": Payload(marker)}, evil)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "a"), str(tmp_path / "a"), "--metrics", "fid",
                                 "--extractor", "inception_v3", "--feature-weights", str(evil)])
    out = user_error(result, f"refused to load {evil}", "nothing in the file was run")
    assert "weights_only" not in out and "False" not in out
    assert not marker.exists()
