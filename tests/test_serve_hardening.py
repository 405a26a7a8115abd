"""`img2img serve` against hostile and careless clients, on a real process with short timeouts: slow
uploads never hold a model's queue and get 408, stalled request heads and idle connections are
closed, foreign Host headers are refused, every answer says nosniff, one request cannot ask for
unbounded tiling or an answer its format cannot hold, and SIGTERM does not wait for stalled uploads."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from serve_support import ServerProcess, closed_within, noise_image, png_bytes, raw_request, read_answer

httpx = pytest.importorskip("httpx")

GOOD = png_bytes(noise_image(60, 44, seed=5))
TRICKLED = png_bytes(noise_image(64, 64, seed=6))  # the body a slow client sends a byte at a time
BODY_TIMEOUT = 1.5
TRANSLATE = "/v1/models/g/translate"


def broken_onnx(path):
    """An ONNX model that computes 60x44 images and fails on any other size: a model bug the server meets."""
    import onnx
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [-1, 3, 44, 60])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["translated"])], "broken",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("translated", TensorProto.FLOAT, ["n", 3, 44, 60])], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def server(translate_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-hardening")
    proc = ServerProcess([f"g={translate_onnx}", f"broken={broken_onnx(root / 'broken.onnx')}", "--device", "cpu",
                          "--queue-size", "8", "--max-uploads", "18", "--body-timeout", str(BODY_TIMEOUT),
                          "--header-timeout", "1.5", "--keep-alive-timeout", "1", "--max-tiles", "64",
                          "--allow-host", "img2img.example"], root / "server.log")
    yield proc.wait_ready()
    assert proc.stop() == 0, proc.log
    # the broken model's failure has a traceback; no refused, slow or stalled client leaves one
    assert proc.log.count("Traceback") <= 1 and "ClientDisconnect" not in proc.log, proc.log


def slow_upload(port: int, length: int | None = None) -> "socket.socket":  # noqa: F821
    length = len(TRICKLED) if length is None else length
    return raw_request(port, f"POST {TRANSLATE} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/png\n"
                             f"Content-Length: {length}")


def test_slow_uploads_get_408_and_never_hold_the_queue(server):
    """16 clients trickle their bodies (more than --queue-size 8): normal requests are answered meanwhile."""
    slow = [slow_upload(server.port) for _ in range(16)]
    stop = threading.Event()

    def trickle() -> None:
        for k in range(len(TRICKLED)):
            for sock in slow:
                try:
                    sock.send(TRICKLED[k:k + 1])
                except OSError:
                    pass
            if stop.wait(0.1):
                return

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        with httpx.Client(timeout=60) as client:
            answers = [client.post(f"{server.url}{TRANSLATE}", content=GOOD) for _ in range(4)]
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        for sock in slow:
            status, headers, body = read_answer(sock)
            assert status == 408, body
            error = json.loads(body)["error"]
            assert error["code"] == "body_timeout" and "--body-timeout" in error["message"]
            assert headers["connection"] == "close" and closed_within(sock, 2)
    finally:
        stop.set()
        trickler.join()
        for sock in slow:
            sock.close()


def test_a_stalled_body_is_answered_408_and_closed(server):
    sock = slow_upload(server.port, length=1000)
    sock.sendall(b"\x89PN")  # 3 of the 1000 bytes it declared, then nothing
    started = time.monotonic()
    status, headers, body = read_answer(sock)
    assert status == 408 and time.monotonic() - started < BODY_TIMEOUT + 3
    assert "3 bytes came" in json.loads(body)["error"]["message"]
    assert closed_within(sock, 2)
    sock.close()


def test_more_uploads_than_max_uploads_get_503_at_once(server):
    stalled = [slow_upload(server.port, length=1000) for _ in range(18)]
    try:
        time.sleep(0.3)
        busy = httpx.post(f"{server.url}{TRANSLATE}", content=GOOD, timeout=60)
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy", busy.text
        assert "--max-uploads" in busy.json()["error"]["message"] and busy.headers["retry-after"] == "1"
        assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 200  # the server itself answers
    finally:
        for sock in stalled:
            sock.close()
    time.sleep(0.3)
    assert httpx.post(f"{server.url}{TRANSLATE}", content=GOOD, timeout=60).status_code == 200


def test_stalled_request_heads_and_idle_connections_are_closed(server):
    head = raw_request(server.port, "POST /v1/models/g/translate HTTP/1.1\nHost: 127.0.0.1")
    head.sendall(b"\r\nContent-Le")  # the head never completes
    idle = raw_request(server.port, "GET /healthz HTTP/1.1\nHost: 127.0.0.1")
    assert read_answer(idle)[0] == 200  # kept alive, then idle
    assert closed_within(idle, 2.5)  # --keep-alive-timeout 1
    assert closed_within(head, 3)  # --header-timeout 1.5
    head.close()
    idle.close()


def test_foreign_host_and_origin_headers_are_refused_unless_allowed(server):
    evil = httpx.get(f"{server.url}/v1/models", headers={"Host": "evil.example"}, timeout=10)
    assert evil.status_code == 400, evil.text
    error = evil.json()["error"]
    assert error["code"] == "unknown_host" and "--allow-host evil.example" in error["message"]
    refused = httpx.post(f"{server.url}{TRANSLATE}", content=GOOD, headers={"Host": "evil.example:80"}, timeout=60)
    assert refused.status_code == 400
    for origin in ("http://evil.example", "null", "https://img2img.example.evil.example"):
        posted = httpx.post(f"{server.url}{TRANSLATE}", content=GOOD, headers={"Origin": origin}, timeout=60)
        assert posted.status_code == 403, (origin, posted.text)
        error = posted.json()["error"]
        assert error["code"] == "foreign_origin" and "--allow-host" in error["message"]
    for origin in (server.url, f"http://localhost:{server.port}", "https://img2img.example"):
        posted = httpx.post(f"{server.url}{TRANSLATE}", content=GOOD, headers={"Origin": origin}, timeout=60)
        assert posted.status_code == 200, (origin, posted.text)
    assert "answering the Host names localhost, 127.0.0.1, [::1], img2img.example" in server.log
    for host in ("img2img.example", f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}"):
        assert httpx.get(f"{server.url}/v1/models", headers={"Host": host}, timeout=10).status_code == 200, host


def test_allowed_hosts_policy_by_bind_address(tmp_path):
    from img2img.inference.serve.server import allowed_hosts

    assert allowed_hosts("127.0.0.1", []) == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("::1", []) == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("0.0.0.0", []) is None  # reachable from the network: any name, as documented
    assert allowed_hosts("0.0.0.0", ["img2img.example"]) == ["localhost", "127.0.0.1", "[::1]", "img2img.example"]
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    result = subprocess.run([sys.executable, "-m", "img2img", "serve", str(tmp_path / "missing"), "--allow-host",
                             "img2img.example:8000"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "without scheme or port" in " ".join(result.stderr.split())


def test_every_answer_says_nosniff_and_a_500_closes_its_connection(server):
    with httpx.Client(timeout=60) as client:
        answers = [client.get(f"{server.url}{path}") for path in ("/", "/healthz", "/v1/models", "/openapi.json",
                                                                 "/static/app.js", "/nowhere", TRANSLATE)]
        answers.append(client.get(f"{server.url}/healthz", headers={"Host": "evil.example"}))
        answers.append(client.post(f"{server.url}{TRANSLATE}", content=b"\x89PNG" * 10))
        failed = client.post(f"{server.url}/v1/models/broken/translate", content=png_bytes(noise_image(50, 50)))
        answers.append(failed)
        after = client.post(f"{server.url}/v1/models/broken/translate", content=GOOD)  # on a new connection
    assert {a.status_code for a in answers} >= {200, 400, 404, 405, 500}
    for answer in answers:
        assert answer.headers.get("x-content-type-options") == "nosniff", (answer.url, answer.status_code)
    assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
    assert failed.headers["connection"] == "close"
    assert after.status_code == 200


@pytest.mark.parametrize("params, size, code, field, words", [
    ({"tile": "16", "overlap": "15"}, (256, 256), "too_many_tiles", "tile", ["--max-tiles", "64", "tile="]),
    ({"overlap": "60", "tile": "64"}, (256, 256), "too_many_tiles", "tile", ["--max-tiles"]),
    ({"format": "webp"}, (20000, 40), "format_limit", "format", ["16383", "format=png"]),
    ({"format": "jpg"}, (70000, 8), "format_limit", "format", ["65535", "format=png"]),
    ({"tile": "٣٢"}, (60, 44), "invalid_field", "tile", ["0-9"]),
    ({"overlap": "３"}, (60, 44), "invalid_field", "overlap", ["0-9"]),
], ids=["tile-16-overlap-15", "tile-64-overlap-60", "webp-20000-wide", "jpg-70000-wide", "arabic-indic-digits",
        "fullwidth-digit"])
def test_work_and_formats_a_request_cannot_ask_for(server, params, size, code, field, words):
    image = Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8))
    answer = httpx.post(f"{server.url}{TRANSLATE}", content=png_bytes(image), params=params, timeout=120)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert all(w in error["message"] for w in words), error["message"]


def test_tiling_within_the_budget_is_served(server):
    answer = httpx.post(f"{server.url}{TRANSLATE}", content=png_bytes(noise_image(128, 96)),
                        params={"tile": "64", "overlap": "16"}, timeout=120)
    assert answer.status_code == 200, answer.text


def _frames(fmt: str, count: int) -> bytes:
    frames = [noise_image(40, 32, seed=k) for k in range(count)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=count > 1, append_images=frames[1:])
    return buffer.getvalue()


@pytest.mark.parametrize("data, code, words", [
    (_frames("GIF", 1), "unsupported_format", ["GIF", "PNG, JPEG, WebP, TIFF or BMP"]),
    (_frames("GIF", 3), "unsupported_format", ["GIF"]),
    (_frames("PNG", 3), "animated_image", ["3 frames", "still"]),
    (_frames("WEBP", 2), "animated_image", ["2 frames"]),
], ids=["still-gif", "animated-gif", "animated-png", "animated-webp"])
def test_images_translate_does_not_read_get_415_saying_so(server, data, code, words):
    answer = httpx.post(f"{server.url}{TRANSLATE}", content=data, timeout=60)
    assert answer.status_code == 415, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == (code, "image")
    assert all(w in error["message"] for w in words), error["message"]


@pytest.mark.parametrize("body", [b"http://example.com/horse.jpg", b"/home/me/horse.jpg\n", b"horse.jpg",
                                  b"C:\\pics\\horse.png", b"@horse.jpg"])
def test_a_path_or_url_as_the_body_gets_400_invalid_field(server, body):
    answer = httpx.post(f"{server.url}{TRANSLATE}", content=body, timeout=60)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_field", "image")
    assert "never reads files or URLs" in error["message"] and "--data-binary @" in error["message"]


def test_sigterm_does_not_wait_for_a_stalled_upload(translate_onnx, tmp_path):
    server = ServerProcess([f"g={translate_onnx}", "--device", "cpu"], tmp_path / "server.log").wait_ready()
    stalled = slow_upload(server.port, length=1000)
    stalled.sendall(b"\x89PN")
    time.sleep(0.3)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        status, headers, body = read_answer(stalled)
        assert status == 503 and json.loads(body)["error"]["code"] == "stopping"
        assert server.proc.wait(timeout=20) == 0, server.log
        assert time.monotonic() - started < 10  # the upload would have held it for --body-timeout (60 s)
        assert "Traceback" not in server.log and "stopped" in server.log
    finally:
        stalled.close()
        server.stop()
