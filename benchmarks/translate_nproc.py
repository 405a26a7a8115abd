"""Images per second of the `img2img translate` command on 1 process and on N (`--nproc N`, torchrun
on this machine), side by side in one run.

Builds a run folder holding an untrained resnet_9blocks CycleGAN checkpoint (as `translate.py` does),
then runs the translate command itself as a subprocess on 1 and on N processes, alternating `--rounds`
times and keeping each one's best round. Each run's images/s is what its summary line states (the
slowest rank's translation time, not the start-up); `wall_s` includes the start-up. It also says
whether the two output folders are identical byte for byte.

The last stdout line is one JSON object; progress goes to stderr.

    python benchmarks/translate_nproc.py --nproc 2 --images 64    # {"processes": {"1": ..., "2": ...}, ...}
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log  # noqa: E402
from translate import make_run, write_inputs  # noqa: E402


def translate_command(inputs: Path, run: Path, out: Path, nproc: int, args: argparse.Namespace) -> dict:
    """One `img2img translate` as a user runs it; its summary's images/s and the wall time."""
    command = [sys.executable, "-m", "img2img", "translate", str(inputs), "--model", str(run), "--out", str(out),
               "--device", args.device, "--batch-size", str(args.batch_size), "--overwrite"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**env, "COLUMNS": "300"})
    wall = time.perf_counter() - start
    text = " ".join(proc.stdout.split())
    found = re.search(r"translated (\d+) images? in [\d.]+ s \(([\d.]+) images/s\)", text)
    if proc.returncode != 0 or found is None or int(found.group(1)) != args.images:
        raise SystemExit(f"{nproc} process(es): exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return {"images_per_s": float(found.group(2)), "wall_s": wall}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2, help="the processes to compare with 1")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternations of 1 and N processes; best round kept")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.nproc < 2:
        raise SystemExit("--nproc: give 2 or more processes to compare with 1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log("building a run folder")
        run = make_run(root, args.size, args.ngf)
        inputs = root / "inputs"
        write_inputs(inputs, args.images, args.size)
        best: dict[int, dict] = {}
        for r in range(args.rounds):
            for nproc in ((1, args.nproc) if r % 2 == 0 else (args.nproc, 1)):
                result = translate_command(inputs, run, root / f"out-{nproc}", nproc, args)
                log(f"round {r + 1}, {nproc} process(es): {result['images_per_s']:.3f} images/s, "
                    f"{result['wall_s']:.1f} s with start-up")
                if result["images_per_s"] > best.get(nproc, {"images_per_s": 0.0})["images_per_s"]:
                    best[nproc] = result
        identical = all((root / "out-1" / p.name).read_bytes() == p.read_bytes()
                        for p in (root / f"out-{args.nproc}").iterdir())
    result = {
        "processes": {str(n): {"images_per_s": round(best[n]["images_per_s"], 3), "wall_s": round(best[n]["wall_s"], 1)}
                      for n in (1, args.nproc)},
        "speedup": round(best[args.nproc]["images_per_s"] / best[1]["images_per_s"], 3),
        "identical_outputs": identical,
        "images": args.images, "size": args.size, "ngf": args.ngf, "batch_size": args.batch_size,
        "rounds": args.rounds, "device": args.device, "cpus": os.cpu_count(),
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
