"""The life of an `img2img serve` process: bad models stop it before it listens (exit 1), a full
queue answers 503 with Retry-After, SIGTERM answers the requests in flight and then exits 0."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from serve_support import ServerProcess, free_port, noise_image, pixels, png_bytes

httpx = pytest.importorskip("httpx")

IMAGE = png_bytes(noise_image(64, 48, seed=9))


def run_serve(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "img2img", "serve", *args, "--port", str(free_port())],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("make, expected", [
    (lambda tmp: [str(tmp / "missing-run")], "no such run folder or file"),
    (lambda tmp: [str((tmp / "notes.pt").write_text("not a checkpoint") and tmp / "notes.pt")],
     "is not an img2img checkpoint: it is a text file"),
    (lambda tmp: [str((tmp / "g.onnx").write_bytes(b"\0" * 64) and tmp / "g.onnx")], "not an ONNX model"),
    (lambda tmp: [str((tmp / "empty-run").mkdir() or tmp / "empty-run")], "holds no checkpoints/last.pt"),
    (lambda tmp: [f"bad/name={tmp}"], "may hold only letters"),
], ids=["missing", "text-as-checkpoint", "broken-onnx", "empty-folder", "bad-name"])
def test_a_bad_model_exits_1_with_a_message_before_listening(tmp_path, make, expected):
    result = run_serve(*make(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert "serving on" not in result.stdout


def test_two_models_with_one_name_and_a_taken_port_are_refused(translate_run, translate_onnx):
    twice = run_serve(f"x={translate_run}", f"x={translate_onnx}")
    assert twice.returncode == 1 and "two models are named 'x'" in twice.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "img2img", "serve", str(translate_onnx), "--port", str(port)],
                                capture_output=True, text=True, timeout=180)
    assert result.returncode == 1 and f"port {port}" in result.stderr and "in use" in result.stderr


def test_a_full_queue_answers_503_with_retry_after_and_recovers(translate_onnx, tmp_path):
    # every request waits 1.5 s for company, so the first two fill a queue of two
    server = ServerProcess([str(translate_onnx), "--device", "cpu", "--queue-size", "2", "--batch-wait-ms", "1500",
                            "--max-batch", "8"], tmp_path / "server.log").wait_ready()
    try:
        answers: list[httpx.Response] = []

        def send() -> None:
            answers.append(httpx.post(f"{server.url}/v1/models/g/translate", content=IMAGE, timeout=120))

        first = [threading.Thread(target=send) for _ in range(2)]
        for t in first:
            t.start()
        time.sleep(0.6)
        busy = httpx.post(f"{server.url}/v1/models/g/translate", content=IMAGE, timeout=120)
        for t in first:
            t.join()
        assert busy.status_code == 503, busy.text
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"]["code"] == "busy" and "--queue-size" in busy.json()["error"]["message"]
        assert [a.status_code for a in answers] == [200, 200]
        assert {a.headers["x-img2img-batch-size"] for a in answers} == {"2"}  # they waited and ran together
        again = httpx.post(f"{server.url}/v1/models/g/translate", content=IMAGE, timeout=120)
        assert again.status_code == 200
    finally:
        assert server.stop() == 0, server.log


def test_sigterm_answers_requests_in_flight_then_exits_0(translate_run, tmp_path):
    server = ServerProcess([f"h2z={translate_run}", "--device", "cpu", "--batch-wait-ms", "2000"],
                           tmp_path / "server.log").wait_ready()
    expected = pixels(httpx.post(f"{server.url}/v1/models/h2z/translate", content=IMAGE, timeout=120).content)
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{server.url}/v1/models/h2z/translate", content=IMAGE, timeout=120)))
    sender.start()
    time.sleep(0.7)  # the request now waits in the batcher for 2 s
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.ConnectError):  # no new connections once stopping
        httpx.get(f"{server.url}/healthz", timeout=5)
    sender.join(timeout=120)
    assert len(answers) == 1 and answers[0].status_code == 200, server.log
    assert np.abs(pixels(answers[0].content) - expected).max() <= 1
    assert server.proc.wait(timeout=60) == 0, server.log
    assert "stopped" in server.log
    server.stop()


def test_the_wheel_carries_the_page(tmp_path):
    """`pip install img2img-pipeline` must bring the template, script and style the server sends."""
    import shutil
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    shutil.copytree(root / "img2img", source / "img2img", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                             "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build a wheel here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    wheel = next((tmp_path / "dist").glob("img2img_pipeline-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    served = root / "img2img" / "inference" / "serve"
    for path in [*served.glob("templates/*"), *served.glob("static/*"), *served.glob("*.py")]:
        assert path.relative_to(root).as_posix() in names, path
