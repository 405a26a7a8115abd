"""benchmarks/serve.py runs as documented and ends with one JSON object holding the promised keys.

Tiny sizes keep it quick; the numbers are not judged here (speed is measured by running the script).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("httpx")
REPO = Path(__file__).resolve().parents[1]


def test_serve_benchmark_reports_throughput_ratio_and_latency_per_concurrency():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve.py"), "--images", "2", "--size", "32",
                           "--ngf", "4", "--requests", "4", "--rounds", "1"], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["serve"]) == {"1", "4", "16"}
    for row in result["serve"].values():
        assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert result["serve"]["16"]["requests"] == 16  # at least one request per client
    best = result["translate_best_images_per_s"]
    assert best == max(r["images_per_s"] for r in result["translate"].values()) > 0
    assert result["ratio_c16_to_translate"] == pytest.approx(result["serve"]["16"]["images_per_s"] / best, rel=0.01)


def test_hostile_clients_benchmark_reports_normal_requests_in_each_situation():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_hostile.py"), "--size", "64", "--ngf", "4",
                           "--requests", "2", "--slow", "2"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["this"]) == {"alone", "slow_2", "tiling"}
    for row in result["this"].values():
        assert row["ok"] == 2 and row["refused"] == {} and 0 < row["p50_ms"] <= row["p99_ms"]
    assert set(result["this"]["tiling"]["tiling_answers"]) == {"400"}  # 2401 tiles: refused before computing
