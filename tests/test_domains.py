"""Any number of domains: ``data.domains`` (``data.a``/``data.b`` are its two-domain spelling), loaded by
the engine with the same transforms, per-domain channels, seeding, exact resume, relative-path rules,
unreadable-file handling and ``data.val`` as a and b; tasks declare the domains they need."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from cli_support import user_error
from img2img.config import validate_pipeline
from img2img.data import TrainData
from img2img.errors import PipelineError
from img2img.testing import tiny_pipeline, train_steps, write_images
from test_task_contract import SOURCE

runner = CliRunner()
CROP = [{"RandomCrop": {"height": 32, "width": 32}}, {"HorizontalFlip": {"p": 0.5}}]
# sha256 of the a/b tensors of two epochs and the fixed batch of `stream_digest`'s data, as img2img 0.2
# (before data.domains) produced them: the a/b sample stream must not change.
STREAM_OF_0_2 = "5175d629c8bd61489fe33e510acd1df433c7ff067b492e47bd0641e617b32e3f"


def invoke(*args):
    from img2img.cli import app

    return runner.invoke(app, [str(a) for a in args])


def stream_digest(data: TrainData, keys=("a", "b")) -> str:
    h = hashlib.sha256()
    for epoch in (0, 1):
        for batch in data.epoch(epoch):
            for key in keys:
                h.update(batch[key].numpy().tobytes())
    fixed = data.fixed_batch(2)
    for key in keys:
        h.update(fixed[key].numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def folders(tmp_path) -> Path:
    write_images(tmp_path / "dA", 5, 40, seed=1)
    write_images(tmp_path / "dB", 3, 36, seed=2)
    write_images(tmp_path / "dC", 4, 38, seed=3, colour=(60, 200, 80))
    return tmp_path


def test_the_a_b_sample_stream_is_that_of_0_2(folders):
    common = dict(kind="unpaired", transforms=CROP, seed=7, batch_size=1)
    spelled_ab = TrainData(a=folders / "dA", b=folders / "dB", **common)
    as_domains = TrainData(a=None, b=None, domains={"a": folders / "dA", "b": folders / "dB"}, **common)
    assert stream_digest(spelled_ab) == stream_digest(as_domains) == STREAM_OF_0_2


def test_a_third_domain_is_loaded_seeded_and_resumed_like_a_and_b(folders):
    common = dict(kind="unpaired", a=None, b=None, transforms=CROP, seed=7, batch_size=2)
    three = TrainData(domains={"a": folders / "dA", "b": folders / "dB", "c": folders / "dC"},
                      channels={"a": 3, "b": 3, "c": 1}, **common)
    two = TrainData(domains={"a": folders / "dA", "b": folders / "dB"}, **common)
    batches = list(three.epoch(1))
    assert set(batches[0]) == {"a", "b", "c"} and batches[0]["c"].shape == (2, 1, 32, 32)
    # adding a domain leaves the a and b streams as they were
    assert [(b["a"].sum(), b["b"].sum()) for b in batches] == [(b["a"].sum(), b["b"].sum()) for b in two.epoch(1)]
    # a resumed epoch continues with exactly the batches an uninterrupted one would have seen
    assert all(torch.equal(x["c"], y["c"]) for x, y in zip(batches[1:], three.epoch(1, start_step=1)))
    # every rank of two sees its share: together the same c images as one process
    ranks = [TrainData(domains={"a": folders / "dA", "b": folders / "dB", "c": folders / "dC"},
                       channels={"c": 1}, rank=r, world_size=2, **{**common, "batch_size": 1}) for r in (0, 1)]
    assert all(set(b) == {"a", "b", "c"} for r in ranks for b in r.epoch(0))
    assert three.num_items == 5 and len(three.files_of("c")) == 4


def test_an_unreadable_file_of_a_third_domain_is_named_or_skipped(folders):
    (folders / "dC" / "broken.png").write_bytes(b"not a png")
    domains = {"a": folders / "dA", "b": folders / "dB", "c": folders / "dC"}
    data = TrainData(kind="unpaired", a=None, b=None, domains=domains, transforms=CROP)
    with pytest.raises(Exception, match="broken.png"):
        data.check()
    data = TrainData(kind="unpaired", a=None, b=None, domains=domains, transforms=CROP, skip_unreadable=True)
    assert [p.name for p, _ in data.check()] == ["broken.png"] and len(data.files_of("c")) == 4


@pytest.mark.parametrize("task", ["cyclegan", "pix2pix"])
def test_data_domains_a_b_train_bit_identically_to_data_a_b(task, tmp_path):
    spelled = tiny_pipeline(tmp_path / "ab", task)
    raw = yaml.safe_load(spelled.read_text())
    raw["data"]["domains"] = {"a": raw["data"].pop("a"), "b": raw["data"].pop("b")}
    as_domains = tmp_path / "domains.yaml"
    as_domains.write_text(yaml.safe_dump(raw))
    runs = [train_steps(p, 3, out=tmp_path / f"run{i}") for i, p in enumerate((spelled, as_domains))]
    ckpts = [torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in runs]
    for key, state in ckpts[0]["nets"].items():
        assert all(torch.equal(t, ckpts[1]["nets"][key][name]) for name, t in state.items()), key
    rows = [[{k: v for k, v in json.loads(line).items() if k not in ("seconds_per_step", "images_per_s")}
             for line in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
    assert rows[0] == rows[1] and len(rows[0]) == 3


def test_validate_names_missing_and_unknown_domains(tmp_path):
    write_images(tmp_path / "A", 2, 32)
    base = {"task": "cyclegan", "model": {"generator": {"name": "resnet_6blocks", "ngf": 8}}}
    with pytest.raises(PipelineError) as err:
        validate_pipeline({**base, "data": {"domains": {"a": "A", "bb": "B"}, "channels": {"a": 3, "cc": 1}}},
                          base_dir=tmp_path)
    text = str(err.value)
    assert "data.domains.b" in text and "required" in text
    assert "data.domains.bb" in text and "did you mean 'b'?" in text
    assert "data.channels.cc" in text
    for data, needle in (({"a": "A", "domains": {"a": "A", "b": "B"}}, "not both"),
                         ({"domains": {"a": "A", "b2": "B"}}, "without the digit 2")):
        with pytest.raises(PipelineError, match=needle):
            validate_pipeline({**base, "data": data}, base_dir=tmp_path)


@pytest.fixture
def contract(fake_distribution):
    return fake_distribution("img2img-contract-tasks", "contract_tasks", SOURCE)


def triad_pipeline(root: Path, **train) -> Path:
    write_images(root / "A", 6, 36, seed=1, colour=(220, 120, 60))
    write_images(root / "B", 6, 36, seed=2, colour=(40, 90, 200))
    write_images(root / "C", 6, 36, seed=3, colour=(60, 200, 80))
    raw = {"task": "triad", "name": "triad", "seed": 0,
           "data": {"domains": {"a": "A", "b": "B", "c": "C"}, "channels": {"c": 1}, "num_workers": 0,
                    "test_a": "A", "test": {"c": "C"},
                    "transforms": [{"RandomCrop": {"height": 32, "width": 32}}]},
           "train": {"max_steps": 4, "log_every": 1, "sample_every": 2, "checkpoint_every": 2, **train}}
    path = root / "triad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_task_declaring_three_domains_gets_them_from_the_engine(contract, tmp_path, monkeypatch):
    path = triad_pipeline(tmp_path)
    monkeypatch.chdir(tmp_path.parent)  # data.domains resolve against the YAML file, not here
    assert invoke("validate", path).exit_code == 0
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = invoke("train", path, "--out", straight)
    assert result.exit_code == 0, result.output
    assert invoke("train", path, "--out", resumed, "--set", "train.max_steps=2").exit_code == 0
    assert invoke("train", "--resume", resumed, "--set", "train.max_steps=4").exit_code == 0

    def losses(run):
        return [(r["step"], r["d"], r["adv"], r["rec"]) for r in map(json.loads, (run / "metrics.jsonl")
                                                                     .read_text().splitlines()) if "d" in r]

    assert losses(resumed) == losses(straight) and len(losses(straight)) == 4
    resolved = yaml.safe_load((straight / "pipeline.yaml").read_text())
    assert resolved["data"]["domains"]["c"] == str((tmp_path / "C").resolve())
    write_images(tmp_path / "photos", 1, 37, seed=5)
    result = invoke("translate", tmp_path / "photos", "--model", straight, "-d", "a2c", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "img000.png").mode == "L"  # domain c has one channel
    result = invoke("evaluate", tmp_path / "eval-a2c", "--model", straight, "--data", path, "-d", "a2c",
                    "--metrics", "psnr", "--channels", "1", "--json")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "eval-a2c").glob("*.png"))) == 6  # data.test_a translated a2c, scored against data.test.c
    message = user_error(invoke("evaluate", tmp_path / "eval-c2b", "--model", straight, "--data", path, "-d", "c2b"),
                         "set data.test.c and data.test_b")

    broken = yaml.safe_load(path.read_text())
    del broken["data"]["domains"]["c"]
    path.write_text(yaml.safe_dump(broken))
    message = user_error(invoke("validate", path), "data.domains.c", "required")
    assert "triad" in message or "domain c" in message
