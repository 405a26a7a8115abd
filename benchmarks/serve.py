"""Throughput and latency of `img2img serve` against `img2img translate` on the same images.

Builds a run folder holding an untrained resnet_9blocks CycleGAN checkpoint (as benchmarks/translate.py
does), writes `--images` PNGs, then in the same run:

1. starts `python -m img2img serve RUN` as its own process on a free port;
2. `--rounds` times, alternately: translates the folder with `translate_inputs` (the `img2img
   translate` command's engine, decoding and encoding included, model loading not) at
   `--batch-size` 1 and at `--max-batch`; then sends `--requests` POSTs of the same PNG bytes to
   the server from 1, 4 and 16 concurrent clients (one httpx client each, in threads of this
   process), timing each request from sending it to the last byte of the answer.

Each figure is its best round (the machine may be shared); translate's best batch size is the
yardstick. The idle server process uses no CPU while translate runs.

`ratio_c16_to_translate` is the server's images/s at 16 clients over the best translate figure
(target >= 0.8). The client runs on the same cores as the server, as it would on one small machine.
The last stdout line is one JSON object; progress goes to stderr.

    python benchmarks/serve.py --images 16 --size 256 --ngf 8 --requests 32 --rounds 2
    python benchmarks/serve.py --backend openvino    # serve --backend openvino against translate --backend openvino
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log  # noqa: E402
from translate import make_run, write_inputs  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def translate_rate(run: Path, inputs: Path, out: Path, batch_size: int, images: int,
                   backend: str | None = None) -> float:
    from rich.console import Console

    from img2img.inference.translator import translate_inputs

    report = translate_inputs([inputs], model=run, out=out, device="cpu", batch_size=batch_size, overwrite=True,
                              console=Console(stderr=True, quiet=True), backend=backend)
    if len(report.written) != images:
        raise SystemExit(f"translate wrote {len(report.written)} of {images} images: {report.failed[:3]}")
    return report.images_per_s


def start_server(run: Path, port: int, max_batch: int, log_path: Path, backend: str | None = None) -> subprocess.Popen:
    import httpx

    out = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "img2img", "serve", f"bench={run}", "--port", str(port),
                             "--device", "cpu", "--max-batch", str(max_batch), "--no-access-log",
                             "--log-level", "warning", *(["--backend", backend] if backend else [])],
                            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"img2img serve exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("img2img serve did not become ready in 300 s")


def load(url: str, bodies: list[bytes], requests: int, concurrency: int) -> dict:
    """`requests` POSTs spread over `concurrency` clients; images/s and latency percentiles."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    batches: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=300) as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                response = session.post(url, content=bodies[i % len(bodies)])
                seconds = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(seconds)
                        batches.append(int(response.headers.get("x-img2img-batch-size", 1)))
                    else:
                        failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} of {requests} requests failed at concurrency {concurrency}: {failures[:3]}")
    ms = np.array(latencies) * 1000
    return {"images_per_s": round(requests / wall, 3), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "mean_batch": round(float(np.mean(batches)), 2),
            "requests": requests}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ngf", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32, help="requests at each concurrency")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of translate and serve; best kept")
    ap.add_argument("--backend", default=None, help="translate's and serve's --backend (e.g. openvino) for both")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log(f"building a resnet_9blocks (ngf {args.ngf}) run and {args.images} PNGs of {args.size}x{args.size}")
        run = make_run(root, args.size, args.ngf)
        inputs = root / "inputs"
        write_inputs(inputs, args.images, args.size)
        bodies = [p.read_bytes() for p in sorted(inputs.glob("*.png"))]
        batch_sizes = sorted({1, args.max_batch})
        translate: dict[int, float] = {}
        serve: dict[str, dict] = {}
        port = free_port()
        server = start_server(run, port, args.max_batch, root / "server.log", args.backend)
        url = f"http://127.0.0.1:{port}/v1/models/bench/translate"
        try:
            load(url, bodies, min(4, args.requests), 2)  # warm-up: first batches, allocations
            translate_rate(run, inputs, root / "warm-up", 1, args.images, args.backend)
            for r in range(args.rounds):  # alternate, keep each one's best round: the machine is shared
                for b in batch_sizes:
                    rate = translate_rate(run, inputs, root / f"out-{b}", b, args.images, args.backend)
                    translate[b] = max(translate.get(b, 0.0), rate)
                    log(f"round {r + 1}: translate --batch-size {b}: {rate:.3f} images/s")
                for c in levels:
                    row = load(url, bodies, max(args.requests, c), c)
                    if row["images_per_s"] > serve.get(str(c), {}).get("images_per_s", 0.0):
                        serve[str(c)] = row
                    log(f"round {r + 1}: serve, {c} clients: {row}")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)

    best = max(translate.values())
    top = str(max(levels))
    result = {
        "translate": {f"batch_{b}": {"images_per_s": round(r, 3)} for b, r in translate.items()},
        "translate_best_images_per_s": round(best, 3),
        "serve": serve,
        f"ratio_c{top}_to_translate": round(serve[top]["images_per_s"] / best, 3),
        "target_ratio": 0.8, "backend": args.backend or "torch",
        "images": args.images, "size": args.size, "ngf": args.ngf, "max_batch": args.max_batch, "rounds": args.rounds,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
