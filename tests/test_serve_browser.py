"""The page of `img2img serve` in headless Chromium on a phone-sized screen, driven through the
DevTools protocol: upload through the file input, the translated image appears, its pixels are the
API's answer, nothing is fetched from elsewhere, and the page fits the screen."""
from __future__ import annotations

import base64
import io
import itertools
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_support import ServerProcess, noise_image, pixels

httpx = pytest.importorskip("httpx")
sync_client = pytest.importorskip("websockets.sync.client")

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
PHONE = (390, 844)


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    def call(self, method: str, timeout: float = 60, **params):
        number = next(self.ids)
        self.ws.send(json.dumps({"id": number, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == number:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str, timeout: float = 60):
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")


@pytest.fixture(scope="module")
def server(translate_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-browser") / "server.log"
    proc = ServerProcess([f"h2z={translate_run}", "--device", "cpu"], log)
    yield proc.wait_ready()
    assert proc.stop() == 0, proc.log


@pytest.fixture
def browser(tmp_path):
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-extensions", "--disable-background-networking", "--remote-allow-origins=*",
                             f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0",
                             f"--window-size={PHONE[0]},{PHONE[1]}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = None
        deadline = time.monotonic() + 60
        while endpoint is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                pytest.skip(f"Chromium could not start (exit {proc.returncode})")
            found = re.search(r"DevTools listening on (ws://[^\s]+)", line)
            endpoint = found.group(1) if found else None
        assert endpoint, "Chromium did not report its DevTools address"
        port = re.search(r":(\d+)/", endpoint).group(1)
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
        with sync_client.connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_translates_an_uploaded_image_like_the_api(server, browser, tmp_path):
    source = tmp_path / "photo.png"
    noise_image(300, 451, seed=31).save(source)
    browser.call("Network.enable")
    browser.call("Emulation.setDeviceMetricsOverride", width=PHONE[0], height=PHONE[1], deviceScaleFactor=1,
                 mobile=True)
    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{server.url}/")
    browser.wait_for("document.readyState === 'complete' && document.querySelectorAll('#metadata tr').length > 5")
    assert browser.evaluate("document.getElementById('direction').options.length") == 2

    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    node = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.call("DOM.setFileInputFiles", files=[str(source)], nodeId=node)
    state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")
    assert state == "done", browser.evaluate("document.getElementById('status').textContent")

    shown = browser.evaluate("""(async () => {
        const img = document.getElementById('output');
        const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
        let text = '';
        for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
        return {data: btoa(text), width: img.naturalWidth, height: img.naturalHeight, src: img.src,
                download: document.getElementById('download').download,
                href: document.getElementById('download').href,
                scroll: document.documentElement.scrollWidth, inner: window.innerWidth};
    })()""")
    assert (shown["width"], shown["height"]) == (300, 451)
    assert shown["src"].startswith("blob:") and shown["href"] == shown["src"]
    assert shown["download"] == "photo-h2z-a2b.png"
    assert shown["scroll"] <= shown["inner"], "the page is wider than a phone's screen"

    api = httpx.post(f"{server.url}/v1/models/h2z/translate", content=source.read_bytes(), timeout=120)
    assert api.status_code == 200
    assert np.array_equal(pixels(base64.b64decode(shown["data"])), pixels(api.content))

    browser.evaluate("document.getElementById('output').scrollIntoView()")
    time.sleep(0.3)
    shot = browser.call("Page.captureScreenshot", format="png")["data"]
    (tmp_path / "page.png").write_bytes(base64.b64decode(shot))
    screen = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB"), dtype=np.float32)
    assert screen.shape[:2] == (PHONE[1], PHONE[0])
    assert screen.std() > 20, "the screenshot is blank"
    requested = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert requested and all(u.startswith((server.url, "blob:", "data:")) for u in requested), requested


def test_page_shows_the_servers_error_for_a_bad_upload(server, browser, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not a picture")
    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{server.url}/")
    browser.wait_for("document.readyState === 'complete' && document.querySelectorAll('#metadata tr').length > 5")
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    node = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.call("DOM.setFileInputFiles", files=[str(bad)], nodeId=node)
    assert browser.wait_for("document.body.dataset.state === 'error'")
    status = browser.evaluate("document.getElementById('status').textContent")
    assert "not an image" in status and "field: image" in status
