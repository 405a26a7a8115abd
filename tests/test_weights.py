"""`img2img weights download/list` against a loopback HTTP server the test starts (never the internet)."""
from __future__ import annotations

import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

PLUGIN = '''
"""A third party's extractor that loads a small weights file."""
from pathlib import Path

import torch
from torch import nn

import img2img
from img2img.evaluation.weights import WeightsFile

WEIGHTS = WeightsFile(name="tiny_weights", file="tiny-weights.pt", url="{url}", sha256="{sha256}")


class Projection(nn.Module):
    input_size = 16

    def __init__(self, state):
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.linear.load_state_dict(state)

    def forward(self, x):
        return self.linear(x.mean((2, 3)))


def tiny_weights(*, weights: Path | None = None) -> nn.Module:
    """A linear map of the mean colour, from a downloaded file."""
    return Projection(torch.load(WEIGHTS.locate(weights), weights_only=True))


tiny_weights.weights = WEIGHTS


@img2img.hookimpl
def register_feature_extractors(register):
    register("tiny_weights", tiny_weights)
'''


def state_bytes() -> bytes:
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(3, 4).state_dict(), buf)
    return buf.getvalue()


GOOD = state_bytes()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/good.pt":
            body = GOOD
        elif self.path == "/other.pt":
            body = GOOD[::-1]
        elif self.path == "/cut.pt":  # announces the whole file, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[: len(GOOD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def plugin(fake_distribution, server):
    fake_distribution("img2img-tinyweights", "img2img_tinyweights",
                      PLUGIN.format(url=f"{server}/good.pt", sha256=hashlib.sha256(GOOD).hexdigest()))


def cli(*args: str):
    from img2img.cli import app

    result = CliRunner().invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


def test_download_checks_the_sha256_and_the_extractor_then_loads_it(plugin, hub, server):
    listed = json.loads(cli("weights", "list", "--json").stdout)
    row = next(r for r in listed if r["name"] == "tiny_weights")
    assert row["present"] is False and row["path"] == str(hub / "tiny-weights.pt")
    assert next(r for r in listed if r["name"] == "random_conv")["file"] is None

    result = cli("weights", "download", "tiny_weights")
    assert result.exit_code == 0, result.output
    assert (hub / "tiny-weights.pt").read_bytes() == GOOD and leftovers(hub) == []
    assert "saved" in result.output and "sha256 checked" in result.output

    again = cli("weights", "download", "tiny_weights")
    assert again.exit_code == 0 and "already there" in again.output
    listed = json.loads(cli("weights", "list", "--json", "--verify").stdout)
    row = next(r for r in listed if r["name"] == "tiny_weights")
    assert row["present"] is True and row["checksum_ok"] is True and row["bytes"] == len(GOOD)

    from img2img.evaluation.distribution import build_extractor

    net = build_extractor("tiny_weights")
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 4)


def test_download_to_a_chosen_file_or_folder(plugin, hub, tmp_path):
    result = cli("weights", "download", "tiny_weights", "--to", str(tmp_path / "models" / "mine.pt"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "mine.pt").read_bytes() == GOOD and not hub.exists()
    assert f"weights: {tmp_path / 'models' / 'mine.pt'}" in "".join(result.output.split("\n"))
    result = cli("weights", "download", "tiny_weights", "--to", str(tmp_path / "models"))  # a folder: its usual name
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "tiny-weights.pt").read_bytes() == GOOD

    from img2img.evaluation.distribution import build_extractor

    assert build_extractor({"name": "tiny_weights", "weights": tmp_path / "models" / "mine.pt"}) is not None


def test_a_checksum_mismatch_is_refused_and_keeps_the_old_file(plugin, hub, server):
    assert cli("weights", "download", "tiny_weights").exit_code == 0
    before = (hub / "tiny-weights.pt").stat().st_mtime_ns
    result = cli("weights", "download", "tiny_weights", "--url", f"{server}/other.pt", "--force")
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "sha256" in message and "was not saved" in message and "Traceback" not in result.output
    assert (hub / "tiny-weights.pt").read_bytes() == GOOD and (hub / "tiny-weights.pt").stat().st_mtime_ns == before
    assert leftovers(hub) == []


def test_a_truncated_transfer_leaves_nothing(plugin, hub, server):
    result = cli("weights", "download", "tiny_weights", "--url", f"{server}/cut.pt")
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "transfer stopped after" in message and "nothing was saved" in message
    assert not (hub / "tiny-weights.pt").exists() and leftovers(hub) == []


def test_server_errors_and_unknown_names(plugin, hub, server):
    result = cli("weights", "download", "tiny_weights", "--url", f"{server}/missing.pt")
    assert result.exit_code == 1 and "answered 404" in result.output
    result = cli("weights", "download", "tiny_weight")
    assert result.exit_code == 1 and "did you mean 'tiny_weights'" in result.output
    result = cli("weights", "download", "random_conv")
    assert result.exit_code == 1 and "loads a weights file" in " ".join(result.output.split())
    result = cli("weights", "download", "tiny_weights", "--url", "file:///etc/passwd")
    assert result.exit_code == 1 and "only http:// and https://" in result.output


def test_inception_v3_refuses_a_file_that_is_not_torchvisions(hub, server):
    """The inception_v3 checksum is the prefix torchvision publishes in the file name (0cc3c7bd)."""
    result = cli("weights", "download", "inception_v3", "--url", f"{server}/good.pt")
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "starting with 0cc3c7bd" in message and hashlib.sha256(GOOD).hexdigest() in message
    assert not (hub / "inception_v3_google-0cc3c7bd.pth").exists() and leftovers(hub) == []


def test_pytorch_fid_weights_are_pytorch_fids_file_checked_by_its_published_prefix(hub, server):
    """`weights download pytorch_fid` knows pytorch-fid's release file; a file whose sha256 does not start
    with 6726825d (the prefix in its name, the check torch.hub makes) is refused and nothing is left."""
    listed = json.loads(cli("weights", "list", "--json").stdout)
    row = next(r for r in listed if r["name"] == "pytorch_fid")
    assert row["file"] == "pt_inception-2015-12-05-6726825d.pth" and row["sha256"] == "6726825d"
    assert row["url"] == ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                          "pt_inception-2015-12-05-6726825d.pth")
    assert row["path"] == str(hub / "pt_inception-2015-12-05-6726825d.pth") and row["present"] is False

    result = cli("weights", "download", "pytorch_fid", "--url", f"{server}/good.pt")
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "starting with 6726825d" in message and "was not saved" in message
    assert not (hub / "pt_inception-2015-12-05-6726825d.pth").exists() and leftovers(hub) == []


def test_pytorch_fid_names_a_missing_or_wrong_file_and_the_command(hub):
    from img2img.errors import Img2ImgError
    from img2img.evaluation.distribution import build_extractor

    with pytest.raises(Img2ImgError, match="img2img weights download pytorch_fid"):
        build_extractor("pytorch_fid")
    hub.mkdir(parents=True)
    (hub / "pt_inception-2015-12-05-6726825d.pth").write_bytes(GOOD)  # a state_dict, of another network
    with pytest.raises(Img2ImgError, match="is not pytorch-fid's FID Inception state_dict.*weights download pytorch_fid"):
        build_extractor("pytorch_fid")
    result = cli("evaluate", str(hub), str(hub), "--metrics", "fid", "--extractor", "pytorch_fid", "--dims", "100")
    assert result.exit_code == 1 and "dims" in result.output and "Traceback" not in result.output

    def boxed(output: str) -> str:  # usage errors come in a rich box that wraps the message
        return " ".join(output.replace("│", " ").split())

    result = cli("evaluate", str(hub), str(hub), "--metrics", "kid", "--extractor", "random_conv", "--dims", "64")
    assert result.exit_code == 2 and "the random_conv extractor has no dims parameter" in boxed(result.output)
    result = cli("evaluate", str(hub), str(hub), "--save-stats", str(hub.parent / "s.npz"))
    assert result.exit_code == 2 and "writes the statistics of one folder" in boxed(result.output)
