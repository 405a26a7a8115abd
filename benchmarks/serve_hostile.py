"""Normal requests to `img2img serve` while hostile clients trickle uploads or ask for heavy tiling.

Builds a run folder holding an untrained resnet_9blocks CycleGAN checkpoint (as benchmarks/serve.py
does), starts `python -m img2img serve RUN` on a free port and measures `--requests` normal POSTs of
one PNG from one client:

- `alone`: nothing else happens;
- `slow_N`: while N clients (for each N in `--slow`) have sent their request head and trickle a
  `--size` PNG body at one byte per 0.25 s;
- `tiling`: while another client keeps asking for `tile=16&overlap=15` on the same image (giving
  up on each after 20 s).

For each: `ok` (200s), `refused` (others, by status; after a request with no answer within 60 s the
rest are not sent), and p50/p99 latency in ms of the 200s. With
`--baseline-src DIR` the same is measured, in the same run, against a server started with
`PYTHONPATH=DIR` (e.g. an older img2img's source tree), under `baseline`. The last stdout line is
one JSON object; progress goes to stderr.

    python benchmarks/serve_hostile.py --size 128 --ngf 8 --requests 16 --slow 16,64
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log  # noqa: E402
from serve import free_port  # noqa: E402
from translate import make_run, write_inputs  # noqa: E402


def start(run: Path, log_path: Path, src: str | None) -> tuple[subprocess.Popen, int]:
    import httpx

    port = free_port()
    env = dict(os.environ)
    if src:  # run from there too: `python -m` looks in the working directory first
        src = str(Path(src).resolve())
        env["PYTHONPATH"] = src
    out = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "img2img", "serve", f"bench={run}", "--port", str(port),
                             "--device", "cpu", "--no-access-log", "--log-level", "warning"],
                            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=src or None)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"img2img serve exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("img2img serve did not become ready in 300 s")


def normal(url: str, body: bytes, requests: int) -> dict:
    import httpx

    latencies, refused = [], Counter()
    with httpx.Client(timeout=60) as client:
        for _ in range(requests):
            start = time.perf_counter()
            try:
                answer = client.post(url, content=body)
            except httpx.TimeoutException:  # the server is tied up: the rest would wait as long
                refused["no answer in 60 s"] += 1
                refused["not sent after that"] = requests - sum(refused.values()) - len(latencies)
                break
            if answer.status_code == 200:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                refused[str(answer.status_code)] += 1
    row = {"ok": len(latencies), "refused": dict(refused)}
    if latencies:
        row.update(p50_ms=round(float(np.percentile(latencies, 50)), 1),
                   p99_ms=round(float(np.percentile(latencies, 99)), 1))
    return row


def with_slow_clients(port: int, url: str, body: bytes, requests: int, count: int) -> dict:
    head = (f"POST /v1/models/bench/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(head)
        socks.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        k = 0
        while not stop.wait(0.25) and k < len(body):
            for sock in socks:
                try:
                    sock.send(body[k:k + 1])
                except OSError:
                    pass
            k += 1

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        time.sleep(0.5)
        return normal(url, body, requests)
    finally:
        stop.set()
        thread.join()
        for sock in socks:
            sock.close()


def with_tiling(url: str, body: bytes, requests: int) -> dict:
    import httpx

    stop = threading.Event()
    heavy = Counter()

    def attack() -> None:
        with httpx.Client(timeout=20) as client:
            while not stop.is_set():
                try:
                    answer = client.post(url, content=body, params={"tile": "16", "overlap": "15"})
                    heavy[str(answer.status_code)] += 1
                except httpx.TimeoutException:
                    heavy["no answer in 20 s"] += 1

    thread = threading.Thread(target=attack)
    thread.start()
    try:
        time.sleep(0.5)
        row = normal(url, body, requests)
    finally:
        stop.set()
        thread.join()
    return {**row, "tiling_answers": dict(heavy)}


def measure(run: Path, root: Path, body: bytes, args: argparse.Namespace, src: str | None) -> dict:
    proc, port = start(run, root / f"server-{'baseline' if src else 'this'}.log", src)
    url = f"http://127.0.0.1:{port}/v1/models/bench/translate"
    try:
        normal(url, body, 2)  # warm-up
        result = {"alone": normal(url, body, args.requests)}
        for count in args.slow:
            result[f"slow_{count}"] = with_slow_clients(port, url, body, args.requests, count)
            log(f"{'baseline' if src else 'this'}: {count} slow clients: {result[f'slow_{count}']}")
        result["tiling"] = with_tiling(url, body, args.requests)
        log(f"{'baseline' if src else 'this'}: {result}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--ngf", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16, help="normal requests in each situation")
    ap.add_argument("--slow", default="16,64", help="numbers of slow clients, comma-separated")
    ap.add_argument("--baseline-src", default=None, help="also measure a server run with PYTHONPATH=DIR")
    args = ap.parse_args(argv)
    args.slow = [int(c) for c in args.slow.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log(f"building a resnet_9blocks (ngf {args.ngf}) run and a {args.size}x{args.size} PNG")
        run = make_run(root, args.size, args.ngf)
        write_inputs(root / "inputs", 1, args.size)
        body = next((root / "inputs").glob("*.png")).read_bytes()
        result = {"this": measure(run, root, body, args, None)}
        if args.baseline_src:
            result["baseline"] = measure(run, root, body, args, args.baseline_src)
    result.update(size=args.size, ngf=args.ngf, requests=args.requests, body_bytes=len(body),
                  omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    emit(result)
    return result


if __name__ == "__main__":
    main()
