"""The prepared GPU check: everything CUDA in img2img, run once on a machine with a CUDA device.

    python benchmarks/device_check.py --out OUT_DIR            # about 8 minutes on one H100/H200
    python benchmarks/device_check.py --out OUT_DIR --quick    # the same checks, fewer steps

It runs the CUDA-marked tests (tests/test_cuda.py); trains cyclegan, pix2pix and cut on synthetic
data in fp32, bf16-mixed and fp16-mixed, with and without channels_last and torch.compile, and checks
the losses stay finite; checks that a resumed run logs exactly what the straight one logs; exports ONNX
from a CUDA-trained run and checks it in onnxruntime; translates with ``--device cuda``; times the
training step against the reference-equivalent step on the same GPU at batch 1 and 4 and projects the
full horse2zebra schedule (200 epochs x 1,067 images); measures the data loader against the step's
demand; and runs DDP over NCCL (two processes with two GPUs, else one process with NCCL initialised).

Each check is recorded, pass or fail, with its numbers, in OUT_DIR/device_check.json (also the last
stdout line) and OUT_DIR/device_check.log; a failing check never stops the others. Without a CUDA
device it exits 2 at once. ``--rehearse`` runs the same script on the CPU at toy sizes (gloo instead of
NCCL, no CUDA tests), to check the script itself before device time is spent on it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
H2Z_STEPS = 200 * 1067

PIPELINE = """\
task: {task}
name: check-{task}
seed: 0
data:
  a: {a}
  b: {b}
  num_workers: 4
  transforms:
    - RandomCrop: {{height: {size}, width: {size}}}
    - HorizontalFlip: {{p: 0.5}}
train:
  device: {device}
  log_every: 10
  sample_every: 100000
  checkpoint_every: 100000
"""


REHEARSAL_MODEL = {  # toy networks for --rehearse, at 32 px
    "cyclegan": "model: {generator: {ngf: 8}, discriminator: {ndf: 8}}\n",
    "cut": "model: {generator: {ngf: 8}, discriminator: {ndf: 8}}\nnce: {num_patches: 32, head_units: 16}\n",
    "pix2pix": "model: {generator: {name: unet, num_downs: 5, ngf: 8}, discriminator: {ndf: 8}}\n",
}


class Checks:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.results: dict[str, dict] = {}
        self.log_file = open(out / "device_check.log", "a", encoding="utf-8")

    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, file=sys.stderr, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def run(self, name: str, fn, *args, **kwargs) -> dict:
        self.log(f"--- {name}")
        start = time.perf_counter()
        try:
            result = {"ok": True, **(fn(*args, **kwargs) or {})}
        except Exception as exc:  # a failing check is a result, not the end of the run
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        self.results[name] = result
        self.log(f"{name}: {'ok' if result['ok'] else 'FAILED ' + result['error']} ({result['seconds']} s)")
        self.save()
        return result

    def save(self) -> None:
        (self.out / "device_check.json").write_text(json.dumps(self.results, indent=2, default=str))

    def cmd(self, args: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
        self.log("$ " + " ".join(map(str, args)))
        done = subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.log_file.write(done.stdout[-6000:] + done.stderr[-6000:] + "\n")
        if done.returncode != 0:
            raise RuntimeError(f"exit {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
        return done


def img2img(*args) -> list[str]:
    return [sys.executable, "-m", "img2img", *map(str, args)]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def make_data(root: Path, size: int) -> dict[str, Path]:
    from PIL import Image

    from img2img.testing import write_images, write_pairs

    write_images(root / "A", 48, size + 16, seed=1, colour=(220, 120, 60))
    write_images(root / "B", 48, size + 16, seed=2, colour=(40, 90, 200))
    write_pairs(root / "PA", root / "PB", 48, size + 16, seed=3)
    Image.new("RGB", (8, 8)).save(root / "probe.png")
    return {"unpaired": (root / "A", root / "B"), "paired": (root / "PA", root / "PB")}


def environment() -> dict:
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
            "gpu": torch.cuda.get_device_name(0), "bf16": torch.cuda.is_bf16_supported(),
            "onnxruntime_providers": onnxruntime.get_available_providers()}


def train(checks: Checks, yaml: Path, run: Path, steps: int, settings: list[str], timeout: float = 600) -> dict:
    sets = [x for s in settings for x in ("--set", s)]
    checks.cmd(img2img("train", yaml, "--out", run, "--overwrite", "--set", f"train.max_steps={steps}", *sets),
               timeout)
    logged = rows(run)
    terms = [k for k in logged[-1] if k not in ("step", "epoch", "seconds_per_step", "images_per_s")
             and not k.startswith(("lr", "val_", "health"))]
    finite = all(isinstance(r.get(k), (int, float)) for r in logged for k in terms)
    if not finite:
        raise RuntimeError(f"a loss became non-finite: {logged[-1]}")
    later = [r["seconds_per_step"] for r in logged[len(logged) // 2:]]
    return {"steps": logged[-1]["step"], "seconds_per_step": round(statistics.median(later), 4),
            "last": {k: round(logged[-1][k], 4) for k in terms}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="fewer steps and modes")
    ap.add_argument("--rehearse", action="store_true",
                    help="run the script on the CPU at toy sizes, to check it before a GPU is used")
    args = ap.parse_args(argv)
    import torch

    rehearse = args.rehearse
    device = "cpu" if rehearse else "cuda"
    if not rehearse and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (--rehearse runs the script on the CPU)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    checks = Checks(args.out)
    work = args.out / "work"
    steps = 4 if rehearse else 60 if args.quick else 150
    size = 32 if rehearse else 128
    checks.run("environment", environment if not rehearse else lambda: {"torch": torch.__version__})
    checks.run("cuda tests", lambda: {"skipped": "rehearsal"} if rehearse else lambda: {"tail": checks.cmd([sys.executable, "-m", "pytest", "-q", "-p",
                                                         "no:cacheprovider", "tests/test_cuda.py"],
                                                        600).stdout.strip().splitlines()[-1]})
    data = make_data(work / "data", size)
    yamls = {}
    for task, kind in (("cyclegan", "unpaired"), ("pix2pix", "paired"), ("cut", "unpaired")):
        a, b = data[kind]
        yamls[task] = work / f"{task}.yaml"
        yamls[task].write_text(PIPELINE.format(task=task, a=a, b=b, size=size, device=device)
                               + (REHEARSAL_MODEL[task] if rehearse else ""))
    modes = {"fp32": ["train.precision=fp32"], "bf16": ["train.precision=bf16-mixed"],
             "fp16": ["train.precision=fp16-mixed"],
             "bf16+cl": ["train.precision=bf16-mixed", "train.channels_last=true"],
             "fp16+cl": ["train.precision=fp16-mixed", "train.channels_last=true"],
             "bf16+cl+compile": ["train.precision=bf16-mixed", "train.channels_last=true", "train.compile=true"]}
    plan = {"cyclegan": list(modes), "pix2pix": ["fp32", "bf16+cl", "fp16"], "cut": ["fp32", "bf16+cl", "fp16"]}
    if args.quick or rehearse:
        plan = {"cyclegan": ["fp32", "bf16+cl", "fp16+cl", "bf16+cl+compile"], "pix2pix": ["bf16+cl"],
                "cut": ["fp16"]}
    if rehearse:  # compiling for the CPU takes minutes and says nothing about the GPU
        plan["cyclegan"].remove("bf16+cl+compile")
    for task, names in plan.items():
        for name in names:
            checks.run(f"train {task} {name}", train, checks, yamls[task], work / f"run-{task}-{name}",
                       steps, modes[name])

    def resume(task: str, settings: list[str]) -> dict:
        straight, resumed = work / f"straight-{task}", work / f"resumed-{task}"
        total = 8 if rehearse else 40
        train(checks, yamls[task], straight, total, settings)
        train(checks, yamls[task], resumed, total // 2, settings)
        checks.cmd(img2img("train", "--resume", resumed, "--set", f"train.max_steps={total}"), 600)
        keys = [k for k in rows(straight)[-1] if k not in ("seconds_per_step", "images_per_s")]
        a = [[r.get(k) for k in keys] for r in rows(straight)]
        b = [[r.get(k) for k in keys] for r in rows(resumed)]
        nets = [torch.load(run / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["nets"]
                for run in (straight, resumed)]
        differ = [f"{net}.{name}" for net, state in nets[0].items() for name, t in state.items()
                  if not torch.equal(t, nets[1][net][name])]
        numbers = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb) if isinstance(x, float)]
        worst = max((abs(x - y) / max(abs(x), 1e-12) for x, y in numbers if isinstance(y, float)), default=0.0)
        result = {"rows": len(a), "bit_identical": a == b and not differ, "tensors_differing": len(differ),
                  "max_relative_difference": worst}
        # on the CPU bit for bit; on a GPU (cuDNN autotuning, atomic adds) to rounding, as the docs say
        if len(a) != len(b) or (worst > 2e-2 if not rehearse else not result["bit_identical"]):
            raise RuntimeError(f"the resumed run differs from the straight one: rows {a[-1]} vs {b[-1]}; "
                               f"{len(differ)} tensors differ, first {differ[:3]}")
        return result

    checks.run("resume cyclegan bf16+cl", resume, "cyclegan", modes["bf16+cl"])
    checks.run("resume cut fp16", resume, "cut", modes["fp16"])
    run = work / "run-cyclegan-fp32"

    def export() -> dict:
        out = checks.cmd(img2img("export", run, "--out", work / "g.onnx"), 600).stdout
        return {"said": out.strip().splitlines()[-1][-160:]}

    checks.run("export onnx from a cuda run", export)

    def translate() -> dict:
        from img2img.testing import write_images

        write_images(work / "photos", 4 if rehearse else 32, 64 if rehearse else 256, seed=9)
        result = {}
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            checks.cmd(img2img("translate", work / "photos", "--model", run, "--out", work / f"out-{precision}",
                               "--device", device, "--precision", precision, "--batch-size", "8", "--overwrite"), 600)
            result[f"{precision}_command_seconds"] = round(time.perf_counter() - start, 2)
        onnx = checks.cmd(img2img("translate", work / "photos", "--model", work / "g.onnx", "--out",
                                  work / "out-onnx", "--overwrite"), 600)
        result["onnx"] = onnx.stdout.strip().splitlines()[-1][-160:]
        return result

    checks.run("translate --device cuda", translate)

    def step_benchmark(batch: int, extra: list[str]) -> dict:
        shape = ["--size", "64", "--steps", "2", "--warmup", "1"] if rehearse else \
            ["--size", "256", "--steps", "20", "--warmup", "5"]
        done = checks.cmd([sys.executable, "benchmarks/train_step.py", "--task", "cyclegan", "--device", device,
                           *shape, "--batch", str(batch), "--vs-reference", *extra], 900)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["horse2zebra_hours"] = round(result["seconds_per_step"] / batch * H2Z_STEPS / 3600, 2)
        return result

    for batch in (1, 4):
        for label, extra in (("fp32", []), ("bf16+cl", ["--precision", "bf16-mixed", "--channels-last"]),
                             ("bf16+cl+compile", ["--precision", "bf16-mixed", "--channels-last", "--compile"])):
            if rehearse and "compile" in label or args.quick and batch == 4 and label != "bf16+cl+compile":
                continue
            checks.run(f"step cyclegan 256 batch {batch} {label}", step_benchmark, batch, extra)

    def loader() -> dict:
        small = ["--workers", "1", "--batches", "4", "--images", "16"] if rehearse else ["--workers", "8",
                                                                                          "--batches", "96"]
        done = checks.cmd([sys.executable, "benchmarks/dataloader.py", *small, "--step-seconds", "0.017"], 600)
        return json.loads(done.stdout.strip().splitlines()[-1])

    checks.run("data loader vs a 17 ms step", loader)

    def ddp() -> dict:
        gpus = torch.cuda.device_count()
        run_dir = work / "run-ddp"
        if gpus >= 2 and not rehearse:
            checks.cmd([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "img2img", "train", yamls["cyclegan"], "--out", run_dir, "--overwrite",
                        "--set", "train.max_steps=40"], 600)
            return {"processes": 2, "rows": len(rows(run_dir))}
        script = work / "ddp_one.py"
        script.write_text(DDP_ONE)
        backend = "gloo" if rehearse else "nccl"
        checks.cmd([sys.executable, script, yamls["cyclegan"], run_dir, backend, device], 600)
        return {"processes": 1, "backend": backend, "rows": len(rows(run_dir))}

    checks.run("ddp over nccl", ddp)
    summary = {name: r["ok"] for name, r in checks.results.items()}
    checks.log(f"summary: {sum(summary.values())}/{len(summary)} checks passed")
    print(json.dumps(checks.results, default=str))
    return 0 if all(summary.values()) else 1


DDP_ONE = '''
"""One process, NCCL (or gloo) initialised, networks wrapped in DistributedDataParallel as under torchrun."""
import os
import sys
from pathlib import Path

import torch

from img2img.config import load_pipeline
from img2img.engine.distributed import Dist
from img2img.engine.train import RunFolder, Trainer, prepare_run_folder

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29533")
backend, kind = sys.argv[3], sys.argv[4]
device = torch.device(kind, 0) if kind == "cuda" else torch.device(kind)
torch.distributed.init_process_group(backend, rank=0, world_size=1,
                                     **({"device_id": device} if kind == "cuda" else {}))


class OneRank(Dist):
    @property
    def enabled(self):
        return True


pipeline = load_pipeline(sys.argv[1], ["train.max_steps=40"])
run = prepare_run_folder(Path(sys.argv[2]), resume=False, overwrite=True)
trainer = Trainer(pipeline, RunFolder(run.root), dist=OneRank(device=device), device=device)
assert any(type(n).__name__ == "DistributedDataParallel" for n in trainer.task.nets.values())
trainer.fit()
torch.distributed.destroy_process_group()
'''


if __name__ == "__main__":
    sys.exit(main())
