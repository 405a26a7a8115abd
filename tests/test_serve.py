"""`img2img serve` as a real process on a free port: the same pixels as `img2img translate`, metadata,
micro-batching under 16 concurrent clients, OpenAPI, the page's HTML, and the docs' httpx snippet.

Bad requests are in test_serve_errors.py, the process's life (SIGTERM, 503, start-up errors) in
test_serve_process.py and the page in a real browser in test_serve_browser.py.
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_support import ServerProcess, noise_image, pixels, png_bytes

httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(300, 451), (512, 512)]  # width, height


@pytest.fixture(scope="module")
def server(translate_run, translate_onnx, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    proc = ServerProcess([f"run={translate_run}", f"onnx={translate_onnx}", "--device", "cpu", "--max-batch", "8",
                          "--batch-wait-ms", "20", "--max-pixels", "300000", "--max-body-mb", "1"], log)
    yield proc.wait_ready()
    assert proc.stop() == 0, proc.log


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve-inputs")
    for i, (w, h) in enumerate(SIZES):
        noise_image(w, h, seed=i).save(folder / f"photo-{w}x{h}.png")
    return folder


def cli_translate(model: Path, inputs: Path, out: Path, *extra: str) -> Path:
    """The real `img2img translate` command."""
    result = subprocess.run([sys.executable, "-m", "img2img", "translate", str(inputs), "--model", str(model),
                             "--out", str(out), "--device", "cpu", *extra], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def translated(translate_run, translate_onnx, inputs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-cli")
    return {"run": cli_translate(translate_run, inputs, root / "run"),
            "onnx": cli_translate(translate_onnx, inputs, root / "onnx")}


def post(server, model: str, data: bytes, **params) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{model}/translate", content=data, params=params, timeout=120)


@pytest.mark.parametrize("model", ["run", "onnx"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_posted_png_returns_the_pixels_translate_writes(server, inputs, translated, model, size):
    name = f"photo-{size[0]}x{size[1]}.png"
    source = (inputs / name).read_bytes()
    expected = pixels(translated[model] / name)
    assert expected.shape == (size[1], size[0], 3)

    raw = post(server, model, source, format="png")
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "image/png"
    assert raw.headers["x-img2img-model"] == model and raw.headers["x-img2img-direction"] == "a2b"
    assert np.abs(pixels(raw.content) - expected).max() <= 1

    form = httpx.post(f"{server.url}/v1/models/{model}/translate", files={"image": (name, source, "image/png")},
                      data={"direction": "a2b"}, timeout=120)
    assert form.status_code == 200, form.text
    assert np.abs(pixels(form.content) - expected).max() <= 1
    assert name.removesuffix(".png") in form.headers["content-disposition"]


@pytest.mark.parametrize("model", ["run", "onnx"])
def test_images_of_one_to_four_pixels_translate_at_their_size(server, model):
    for width, height in [(1, 1), (3, 2), (1, 4)]:
        answer = post(server, model, png_bytes(noise_image(width, height, seed=width)), format="png")
        assert answer.status_code == 200, answer.text
        assert pixels(answer.content).shape == (height, width, 3)


def test_other_direction_tiling_and_formats_match_translate(server, translate_run, inputs, tmp_path):
    from rich.console import Console

    from img2img.inference.translator import translate_inputs

    quiet = Console(file=io.StringIO())
    source = inputs / "photo-300x451.png"
    b2a = translate_inputs([source], model=translate_run, out=tmp_path / "b2a", direction="b2a", device="cpu",
                           console=quiet).written[0]
    answer = post(server, "run", source.read_bytes(), direction="b2a")
    assert answer.status_code == 200 and answer.headers["x-img2img-direction"] == "b2a"
    assert np.abs(pixels(answer.content) - pixels(b2a)).max() <= 1

    tiled = translate_inputs([source], model=translate_run, out=tmp_path / "tiled", tile=64, overlap=16,
                             device="cpu", console=quiet).written[0]
    answer = post(server, "run", source.read_bytes(), tile="64", overlap="16")
    assert answer.status_code == 200, answer.text
    assert np.abs(pixels(answer.content) - pixels(tiled)).max() <= 1
    untiled = post(server, "run", source.read_bytes())
    assert np.abs(pixels(untiled.content) - pixels(tiled)).max() > 1  # the tile option did something

    jpeg = translate_inputs([source], model=translate_run, out=tmp_path / "jpg", fmt="jpg", device="cpu",
                            console=quiet).written[0]
    answer = post(server, "run", source.read_bytes(), format="jpg")
    assert answer.headers["content-type"] == "image/jpeg"
    assert np.abs(pixels(answer.content) - pixels(jpeg)).max() <= 1


def test_uploads_decode_like_files_exif_sixteen_bit_and_grey(server, translate_run, tmp_path):
    """EXIF orientation, 16-bit colour (kept with keep_depth) and greyscale: as `img2img translate`."""
    from rich.console import Console

    from img2img.inference.translator import translate_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    noise_image(64, 40, seed=5).save(folder / "rotated.jpg", exif=exif, quality=95)
    deep = (np.asarray(noise_image(48, 32, seed=6), dtype=np.uint16) * 257 + 100).astype(np.uint16)
    import cv2

    cv2.imwrite(str(folder / "deep.png"), deep[:, :, ::-1])
    noise_image(40, 36, seed=7, mode="L").save(folder / "grey.png")
    report = translate_inputs([folder], model=translate_run, out=tmp_path / "out", keep_depth=True, device="cpu",
                              console=Console(file=io.StringIO()))
    assert len(report.written) == 3
    for name, params in (("rotated.jpg", {}), ("deep.png", {"keep_depth": "true"}), ("grey.png", {})):
        answer = post(server, "run", (folder / name).read_bytes(), **params)
        assert answer.status_code == 200, answer.text
        ours, theirs = pixels(answer.content), pixels(tmp_path / "out" / name)
        assert ours.shape == theirs.shape, name
        tolerance = 257 if name == "deep.png" else 1
        assert np.abs(ours - theirs).max() <= tolerance, name
    assert pixels(post(server, "run", (folder / "rotated.jpg").read_bytes()).content).shape[:2] == (64, 40)
    assert pixels(post(server, "run", (folder / "deep.png").read_bytes(), keep_depth="1").content).max() > 255


def test_models_lists_metadata(server):
    models = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert list(models) == ["run", "onnx"]
    run = models["run"]
    assert run["kind"] == "run" and run["task"] == "cyclegan" and run["pipeline"] == "tiny-translate"
    assert run["generator"] == "resnet_6blocks" and run["step"] == 2 and run["ema"] is False
    from img2img._version import __version__

    assert run["img2img_version"] == __version__
    assert set(run["directions"]) == {"a2b", "b2a"} and run["default_direction"] == "a2b"
    assert run["directions"]["b2a"] == {**run["directions"]["b2a"], "in_channels": 3, "out_channels": 3,
                                        "size_multiple": 4, "ema": False}
    onnx = models["onnx"]
    assert onnx["kind"] == "onnx" and onnx["file"].endswith(".onnx") and list(onnx["directions"]) == ["a2b"]
    assert onnx["onnx_metadata"]["direction"] == "a2b" and onnx["onnx_metadata"]["in_channels"] == "3"
    assert onnx["task"] == "cyclegan" and onnx["img2img_version"] == __version__
    assert "/" not in run["file"] and "/" not in onnx["file"]  # no server paths leak
    assert httpx.get(f"{server.url}/v1/models/onnx").json() == onnx
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready", "models": ["run", "onnx"]}


def test_64_requests_from_16_concurrent_clients_all_succeed_and_are_batched(server):
    images = [png_bytes(noise_image(96, 128, seed=20 + i)) for i in range(4)]
    expected = [pixels(post(server, "run", data).content) for data in images]

    def client(k: int) -> list[tuple[int, int, np.ndarray, int]]:
        results = []
        with httpx.Client(timeout=120) as session:
            for j in range(4):
                i = (k + j) % len(images)
                r = session.post(f"{server.url}/v1/models/run/translate", content=images[i])
                results.append((i, r.status_code, pixels(r.content) if r.status_code == 200 else r.text,
                                int(r.headers.get("x-img2img-batch-size", 0))))
        return results

    with ThreadPoolExecutor(16) as pool:
        results = [row for rows in pool.map(client, range(16)) for row in rows]
    assert len(results) == 64
    assert all(status == 200 for _, status, _, _ in results), [r for r in results if r[1] != 200][:3]
    for i, _, image, _ in results:
        assert np.abs(image - expected[i]).max() <= 1
    sizes = [batch for *_, batch in results]
    assert max(sizes) > 1 and max(sizes) <= 8, sizes  # concurrent requests of one size ran together


def test_openapi_describes_the_versioned_api(server):
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/models", "/v1/models/{name}", "/v1/models/{name}/translate", "/healthz", "/readyz"} <= set(doc["paths"])
    post_op = doc["paths"]["/v1/models/{name}/translate"]["post"]
    names = {p["$ref"].rsplit("/", 1)[-1] for p in post_op["parameters"]}
    assert names == {"name", "direction", "format", "tile", "overlap", "tile_norm", "keep_depth"}
    assert {"200", "400", "404", "413", "415", "503"} <= set(post_op["responses"])
    assert "multipart/form-data" in doc["components"]["requestBodies"]["Image"]["content"]

    def refs(node):
        if isinstance(node, dict):
            yield from ([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(doc))
    assert len(found) > 10
    for ref in found:  # every reference points at something in the document
        target = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]


def test_page_is_served_offline_with_escaped_model_names(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert 'type="file"' in html and 'id="output"' in html and 'id="download"' in html
    assert 'name="viewport"' in html  # phone-sized screens
    assets = [a.split("?")[0] for a in re.findall(r'(?:src|href)="([^"]+)"', html)]
    assert "static/app.js" in assets and "static/app.css" in assets
    for asset in ("static/app.js", "static/app.css"):
        text = httpx.get(f"{server.url}/{asset}").text
        assert len(text) > 500
        assert not re.search(r"https?://|//cdn", text), asset  # nothing from elsewhere: works offline
    assert not any(a.startswith(("http:", "https:", "//")) for a in assets)


def test_docs_httpx_snippet_translates(server, inputs, translated, tmp_path):
    text = (ROOT / "docs" / "serve.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    snippet = next(b for b in blocks if "httpx" in b)
    assert not re.search(r"^\s*(import|from)\s+(torch|img2img)\b", snippet, flags=re.M)
    script = tmp_path / "client.py"
    script.write_text(snippet)
    source = inputs / "photo-300x451.png"
    target = tmp_path / "translated.png"
    result = subprocess.run([sys.executable, str(script), server.url, "run", str(source), str(target)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert np.abs(pixels(target) - pixels(translated["run"] / source.name)).max() <= 1
    bad = subprocess.run([sys.executable, str(script), server.url, "nope", str(source), str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode != 0 and "no model named 'nope'" in bad.stderr
    assert not (tmp_path / "x.png").exists()


def test_the_event_loop_answers_while_a_model_computes(server):
    """Inference runs in the model's worker thread: health checks and metadata answer meanwhile."""
    import threading

    large = png_bytes(noise_image(520, 560, seed=40))
    done: list[int] = []

    def send() -> None:
        done.append(post(server, "run", large).status_code)

    senders = [threading.Thread(target=send) for _ in range(6)]
    for t in senders:
        t.start()
    answered_during = 0
    while any(t.is_alive() for t in senders):
        health = httpx.get(f"{server.url}/healthz", timeout=30)
        models = httpx.get(f"{server.url}/v1/models", timeout=30)
        assert health.status_code == models.status_code == 200
        if len(done) < len(senders):  # the translations were still running when these came back
            answered_during += 1
    for t in senders:
        t.join()
    assert done == [200] * len(senders)
    assert answered_during >= 3
