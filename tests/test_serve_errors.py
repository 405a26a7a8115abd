"""Bad requests to a real `img2img serve` process: each gets a 4xx JSON error naming the problem and
the field, and the next good request is answered as usual."""
from __future__ import annotations

import struct
import zlib

import pytest

from serve_support import ServerProcess, noise_image, pixels, png_bytes

httpx = pytest.importorskip("httpx")

GOOD = png_bytes(noise_image(60, 44, seed=3))


@pytest.fixture(scope="module")
def server(translate_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-errors") / "server.log"
    proc = ServerProcess([f"h2z={translate_run}", "--device", "cpu", "--max-pixels", "300000",
                          "--max-body-mb", "1"], log)
    yield proc.wait_ready()
    assert proc.stop() == 0, proc.log


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb(side: int = 20000) -> bytes:
    """A valid greyscale PNG of side x side zeros: a few hundred KiB that would decode to side**2 bytes."""
    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(packer.compress(row * 500) for _ in range(side // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def raw(body: bytes, **params):
    return {"content": body, "params": params}


def multipart(*fields: tuple[str, str]) -> dict:
    """A multipart body of text fields only (httpx would send those urlencoded)."""
    parts = [f'--b0undary\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields]
    body = ("".join(parts) + "--b0undary--\r\n").encode()
    return {"content": body, "headers": {"Content-Type": "multipart/form-data; boundary=b0undary"}}


CASES = {
    # name: (request keyword arguments, path model, status, error code, field)
    "not an image": (raw(b"hello, this is text and not a picture\n" * 20), "h2z", 415, "not_an_image", "image"),
    "truncated": (raw(GOOD[: len(GOOD) // 2]), "h2z", 400, "unreadable_image", "image"),
    "zero bytes": (raw(b""), "h2z", 400, "empty_image", "image"),
    "decompression bomb": (raw(decompression_bomb()), "h2z", 413, "too_many_pixels", "image"),
    "more pixels than --max-pixels": (raw(png_bytes(noise_image(600, 520))), "h2z", 413, "too_many_pixels", "image"),
    "body over --max-body-mb": (raw(b"\x89PNG" + bytes(1_200_000)), "h2z", 413, "body_too_large", "image"),
    "unknown model": (raw(GOOD), "zebra", 404, "unknown_model", "name"),
    "unknown direction": (raw(GOOD, direction="c2d"), "h2z", 400, "unknown_direction", "direction"),
    "misspelt field": (raw(GOOD, directon="b2a"), "h2z", 400, "unknown_field", "directon"),
    "bad tile": (raw(GOOD, tile="huge"), "h2z", 400, "invalid_field", "tile"),
    "tile too small": (raw(GOOD, tile="4"), "h2z", 400, "invalid_field", "tile"),
    "overlap not below tile": (raw(GOOD, tile="32", overlap="32"), "h2z", 400, "invalid_field", "overlap"),
    "bad tile_norm": (raw(GOOD, tile_norm="median"), "h2z", 400, "invalid_field", "tile_norm"),
    "bad format": (raw(GOOD, format="gif"), "h2z", 400, "invalid_field", "format"),
    "bad keep_depth": (raw(GOOD, keep_depth="maybe"), "h2z", 400, "invalid_field", "keep_depth"),
    "field given twice": ({"content": GOOD, "params": [("direction", "a2b"), ("direction", "b2a")]}, "h2z", 400,
                          "repeated_field", "direction"),
    "a path instead of an image": (raw(GOOD, image="/etc/passwd"), "h2z", 400, "invalid_field", "image"),
    "multipart file under another name": ({"files": {"file": ("a.png", GOOD, "image/png")}}, "h2z", 400,
                                          "unknown_field", "file"),
    "multipart without the image": (multipart(("direction", "a2b")), "h2z", 400, "missing_field", "image"),
    "multipart image as text": (multipart(("image", "/etc/passwd")), "h2z", 400, "invalid_field", "image"),
    "multipart two files": ({"files": [("image", ("a.png", GOOD)), ("image", ("b.png", GOOD))]}, "h2z", 400,
                            "bad_multipart", "image"),
    "multipart misspelt text field": ({"data": {"tile_nrom": "local"}, "files": {"image": ("a.png", GOOD)}}, "h2z",
                                      400, "unknown_field", "tile_nrom"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_a_4xx_naming_the_problem_then_the_next_request_succeeds(server, case):
    kwargs, model, status, code, field = CASES[case]
    answer = httpx.post(f"{server.url}/v1/models/{model}/translate", timeout=120, **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["status"] == status and error["message"]
    if code is not None:
        assert (error["code"], error["field"]) == (code, field), error
    if field is not None:
        assert field in error["message"] or field == "name"
    good = httpx.post(f"{server.url}/v1/models/h2z/translate", content=GOOD, timeout=120)
    assert good.status_code == 200, good.text
    assert pixels(good.content).shape == (44, 60, 3)


def test_a_streamed_body_over_the_limit_is_cut_off(server):
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536  # 2.5 MiB without a Content-Length

    answer = httpx.post(f"{server.url}/v1/models/h2z/translate", content=chunks(), timeout=120)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"
    assert httpx.post(f"{server.url}/v1/models/h2z/translate", content=GOOD, timeout=120).status_code == 200


def test_errors_say_what_to_do(server):
    message = httpx.post(f"{server.url}/v1/models/h2z/translate", content=GOOD, params={"directon": "b2a"}).json()
    assert "did you mean 'direction'" in message["error"]["message"]
    unknown = httpx.post(f"{server.url}/v1/models/zebra/translate", content=GOOD).json()["error"]["message"]
    assert "h2z" in unknown  # lists the models there are
    large = httpx.post(f"{server.url}/v1/models/h2z/translate", content=png_bytes(noise_image(600, 520))).json()
    assert "600x520" in large["error"]["message"] and "300000" in large["error"]["message"]


def test_wrong_method_and_unknown_paths_are_json_errors(server):
    answer = httpx.get(f"{server.url}/v1/models/h2z/translate")
    assert answer.status_code == 405 and "POST" in answer.json()["error"]["message"]
    missing = httpx.get(f"{server.url}/v2/models")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{server.url}/v1/models/zebra").status_code == 404
    assert httpx.get(f"{server.url}/static/../pyproject.toml").status_code == 404  # no files outside static/


def test_corrupted_images_of_every_format_never_get_a_5xx(server):
    """Bytes flipped, cut or repeated in PNG, JPEG, WebP, TIFF, BMP and GIF uploads: 200 or 4xx, never 5xx."""
    import io

    import numpy as np

    rng = np.random.default_rng(0)
    image = noise_image(40, 32, seed=11)
    originals = []
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        originals.append(buffer.getvalue())
    statuses = []
    with httpx.Client(timeout=120) as client:
        for k in range(48):
            data = bytearray(originals[k % len(originals)])
            kind = k // len(originals) % 4
            if kind == 0:  # flip bytes in the header
                for i in rng.integers(0, min(64, len(data)), 4):
                    data[i] ^= 0xFF
            elif kind == 1:  # flip bytes anywhere
                for i in rng.integers(0, len(data), 16):
                    data[i] = int(rng.integers(0, 256))
            elif kind == 2:  # cut off
                data = data[: int(rng.integers(1, len(data)))]
            else:  # a header followed by garbage
                data = data[:32] + bytearray(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
            answer = client.post(f"{server.url}/v1/models/h2z/translate", content=bytes(data))
            statuses.append(answer.status_code)
            assert answer.status_code < 500, (k, answer.text)
    assert {200, 400} <= set(statuses) or {200, 415} <= set(statuses), statuses
    assert httpx.post(f"{server.url}/v1/models/h2z/translate", content=GOOD, timeout=120).status_code == 200
