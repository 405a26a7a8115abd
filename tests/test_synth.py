"""Synthetic demo datasets and the public dataset downloader (never touching the network)."""
from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2img.datasets import synth as synth
from img2img.data import TrainData, read_image
from img2img.errors import Img2ImgError


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("name", ["shapes", "outlines"])
def test_synthesis_is_byte_identical_for_a_seed(tmp_path, name):
    first = digest(synth.synthesize(name, tmp_path / "one", seed=3, count=12))
    second = digest(synth.synthesize(name, tmp_path / "two", seed=3, count=12))
    assert first == second
    other = digest(synth.synthesize(name, tmp_path / "three", seed=4, count=12))
    assert other["trainA/0000.png"] != first["trainA/0000.png"]
    # image i does not depend on how many are made
    more = digest(synth.synthesize(name, tmp_path / "four", seed=3, count=20))
    assert more["trainB/0011.png"] == first["trainB/0011.png"]


@pytest.mark.parametrize("name, size", [("shapes", 72), ("outlines", 64)])
def test_default_counts_sizes_and_readme(tmp_path, name, size):
    out = synth.synthesize(name, tmp_path / name)
    counts = {sub: len(list((out / sub).glob("*.png"))) for sub in ("trainA", "trainB", "testA", "testB")}
    assert counts == {"trainA": 200, "trainB": 200, "testA": 20, "testB": 20}
    assert Image.open(out / "trainA" / "0000.png").size == (size, size)
    readme = (out / "README.txt").read_text()
    assert name in readme and "--seed 0" in readme


def colour_stats(folder: Path) -> tuple[float, float]:
    """(mean brightness, mean red-minus-blue of strongly coloured pixels) over a folder."""
    images = [read_image(p, 3) for p in sorted(folder.glob("*.png"))]
    stack = np.stack(images)
    saturation = stack.max(axis=-1) - stack.min(axis=-1)
    coloured = stack[saturation > 0.4]
    return float(stack.mean()), float((coloured[:, 0] - coloured[:, 2]).mean())


def test_shapes_domains_are_warm_on_light_and_cool_on_dark(tmp_path):
    out = synth.synthesize("shapes", tmp_path / "s", count=30)
    bright_a, warmth_a = colour_stats(out / "trainA")
    bright_b, warmth_b = colour_stats(out / "trainB")
    assert bright_a > 0.7 and bright_b < 0.35
    assert warmth_a > 0.3 and warmth_b < -0.3
    data = TrainData(kind="unpaired", a=out / "trainA", b=out / "trainB", batch_size=4)
    assert data.check() == [] and data.steps_per_epoch == 7


def test_outlines_pairs_share_geometry(tmp_path):
    out = synth.synthesize("outlines", tmp_path / "o", count=10)
    data = TrainData(kind="paired", a=out / "trainA", b=out / "trainB", batch_size=2)
    assert data.check() == []
    for i in range(10):
        drawing = read_image(out / "trainA" / f"{i:04d}.png", 3)
        filled = read_image(out / "trainB" / f"{i:04d}.png", 3)
        assert np.abs(drawing - drawing.mean(axis=-1, keepdims=True)).max() < 0.02  # black on white only
        ink = drawing.mean(axis=-1) < 0.3
        assert ink.any()
        assert filled.mean(axis=-1)[ink].mean() < 0.35  # the outline is in the target too
        assert (filled.max(axis=-1) - filled.min(axis=-1)).max() > 0.3  # and the shapes are coloured


def test_ensure_synth_generates_once(tmp_path):
    out = tmp_path / "demo"
    assert synth.ensure_synth("shapes", out) is True
    before = digest(out)
    assert synth.ensure_synth("shapes", out) is False
    assert digest(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert synth.ensure_synth("outlines", empty, seed=1) is True and (empty / "trainB" / "0000.png").is_file()


def test_unknown_synthetic_name_suggests(tmp_path):
    with pytest.raises(Img2ImgError, match="did you mean 'shapes'"):
        synth.synthesize("shapse", tmp_path / "x")
    with pytest.raises(Img2ImgError, match="did you mean 'outlines'"):
        synth.ensure_synth("outline", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# downloads


def test_download_catalogue():
    assert synth.DOWNLOADS["horse2zebra"] == {
        "cyclegan": "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip"
    }
    assert synth.DOWNLOADS["edges2shoes"] == {
        "pix2pix": "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/edges2shoes.tar.gz"
    }
    assert set(synth.DOWNLOADS["facades"]) == {"cyclegan", "pix2pix"}
    assert len(synth.DOWNLOADS) == 14


def test_download_rejects_unknown_names_and_kinds_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(synth.urllib.request, "urlopen", no_network)
    with pytest.raises(Img2ImgError, match="did you mean 'horse2zebra'"):
        synth.download("horse2zebr", tmp_path)
    with pytest.raises(Img2ImgError, match="no pix2pix archive"):
        synth.download("horse2zebra", tmp_path, kind="pix2pix")


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_download_from_a_local_archive(tmp_path):
    archive = make_zip(tmp_path / "horse2zebra.zip", {
        "horse2zebra/trainA/1.png": png_bytes(), "horse2zebra/trainB/1.png": png_bytes(),
    })
    out = tmp_path / "datasets"
    got = synth.download("horse2zebra", out, url=archive.as_uri(), progress=False)
    assert got == out / "horse2zebra"
    assert read_image(got / "trainA" / "1.png", 3).shape == (4, 4, 3)
    assert sorted(p.name for p in out.iterdir()) == ["horse2zebra"]  # no temp files left
    # an existing copy is kept without downloading again
    assert synth.download("horse2zebra", out, url=(tmp_path / "gone.zip").as_uri()) == got


def test_download_of_a_pix2pix_tarball(tmp_path):
    archive = tmp_path / "facades.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = png_bytes()
        info = tarfile.TarInfo("facades/train/1.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    got = synth.download("facades", tmp_path / "d", url=archive.as_uri(), progress=False)
    assert (got / "train" / "1.jpg").is_file()


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    missing = (tmp_path / "nowhere.zip").as_uri()
    with pytest.raises(Img2ImgError) as info:
        synth.download("apple2orange", tmp_path / "d", url=missing, progress=False)
    assert missing in str(info.value) and "curl" in str(info.value)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(synth.urllib.request, "urlopen", offline)
    with pytest.raises(Img2ImgError) as info:
        synth.download("monet2photo", tmp_path / "d", progress=False)
    message = str(info.value)
    assert synth.DOWNLOADS["monet2photo"]["cyclegan"] in message and "name resolution" in message
    assert str(tmp_path / "d" / "monet2photo" / "trainA") in message
    assert not (tmp_path / "d").exists()  # the partial download is gone, and so is the folder it created


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_zip_members_outside_the_folder_are_refused(tmp_path, member):
    archive = make_zip(tmp_path / "bad.zip", {"fine/a.txt": b"a", member: b"evil"})
    out = tmp_path / "out"
    with pytest.raises(Img2ImgError, match="refusing"):
        synth.extract_archive(archive, out)
    assert list(out.iterdir()) == []  # nothing written, not even the safe member
    assert not (tmp_path / "evil.txt").exists()


def test_tar_links_and_traversal_are_refused(tmp_path):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tf:
        link = tarfile.TarInfo("data/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(Img2ImgError, match="refusing"):
        synth.extract_archive(archive, tmp_path / "out")
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(Img2ImgError, match="refusing"):
        synth.extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_extraction_merges_into_existing_folders(tmp_path):
    out = tmp_path / "out"
    (out / "facades" / "train").mkdir(parents=True)
    (out / "facades" / "train" / "keep.jpg").write_bytes(b"k")
    archive = make_zip(tmp_path / "f.zip", {"facades/trainA/1.png": b"1"})
    assert synth.extract_archive(archive, out) == [out / "facades"]
    assert (out / "facades" / "train" / "keep.jpg").is_file() and (out / "facades" / "trainA" / "1.png").is_file()
    not_archive = tmp_path / "page.zip"
    not_archive.write_text("<html>error</html>")
    with pytest.raises(Img2ImgError, match="not a zip or tar archive"):
        synth.extract_archive(not_archive, out)


def test_shapes3_writes_three_domains_that_data_domains_can_name(tmp_path):
    from img2img.config import DataConfig
    from img2img.datasets.synth import synthesize, synthetic_dataset
    from img2img.datasets.synth_checks import synthesize_problems

    out = synthesize("shapes3", tmp_path / "s3", count=2)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "testA", "testB", "testC",
                                                     "trainA", "trainB", "trainC"]
    assert synthetic_dataset(out) == {"name": "shapes3", "train": 2, "test": 2}
    c = np.asarray(Image.open(out / "trainC" / "0000.png").convert("RGB"), dtype=float)
    assert c[..., 1].mean() > c[..., 0].mean()  # green shapes on grey
    good = DataConfig(synthesize="shapes3", domains={d: out / f"train{d.upper()}" for d in "abc"})
    assert synthesize_problems(good, "unpaired", "stargan") == []
    bad = DataConfig(synthesize="shapes3", domains={"a": out / "trainA", "d": out / "trainD"})
    assert [p for p, _ in synthesize_problems(bad, "unpaired", "stargan")] == ["data.domains.d"]
