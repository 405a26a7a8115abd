"""What the first seconds of the command line cost: `img2img --help`, `--version` and `pipelines`.

Each command runs in a fresh process, `--rounds` times (the commands alternate, so a change in the
machine's load hits all alike); the median wall time and the peak resident set size of the process
are reported, and the process's CPU time (user + system: the steadier number on a shared machine).
`python -c "import torch"` runs beside them as the yardstick: a `--help` that imported
torch cost at least that. With `--before REF`, the same commands also run on the img2img package of
that git revision (extracted to a temporary folder), so before and after are measured in one run.

The last stdout line is one JSON object; progress goes to stderr.

    python benchmarks/cli_startup.py --rounds 5 --before db3f41c
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS = {"help": ["-m", "img2img", "--help"], "version": ["-m", "img2img", "--version"],
            "pipelines": ["-m", "img2img", "pipelines"], "import_torch": ["-c", "import torch"]}


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def run_once(args: list[str], pythonpath: str | None, cwd: str) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds of one process running `python ARGS` in `cwd` (not the checkout,
    whose `img2img` folder `python -m` would find first)."""
    env = {**os.environ, "COLUMNS": "100"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # ru_maxrss is KiB on Linux


def extract(ref: str, into: Path) -> Path:
    """The `img2img` package of git revision `ref`, extracted under `into`."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", ref, "img2img"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as archive:
        archive.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", metavar="REF", help="Also run the commands on the package of this git revision.")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"now": None}
        if opts.before:
            variants["before"] = str(extract(opts.before, Path(tmp) / "before"))
        samples: dict[str, list[tuple[float, float, float]]] = {}
        for round_ in range(opts.rounds):
            for variant, path in variants.items():
                for name, args in COMMANDS.items():
                    if name == "import_torch" and variant != "now":
                        continue
                    key = name if variant == "now" else f"{name}_before"
                    samples.setdefault(key, []).append(run_once(args, path, tmp))
            log(f"round {round_ + 1}/{opts.rounds}: " + ", ".join(f"{k} {v[-1][0]:.2f}s" for k, v in samples.items()))
    result: dict[str, object] = {"benchmark": "cli_startup", "rounds": opts.rounds, "before": opts.before}
    for key, values in samples.items():
        result[f"{key}_s"] = round(statistics.median(v[0] for v in values), 3)
        result[f"{key}_peak_rss_mib"] = round(max(v[1] for v in values), 1)
        result[f"{key}_cpu_s"] = round(statistics.median(v[2] for v in values), 3)
    result["help_over_import_torch"] = round(result["help_s"] / result["import_torch_s"], 3)
    if opts.before:
        result["help_now_over_before"] = round(result["help_s"] / result["help_before_s"], 3)
        result["help_rss_now_over_before"] = round(result["help_peak_rss_mib"] / result["help_before_peak_rss_mib"], 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
