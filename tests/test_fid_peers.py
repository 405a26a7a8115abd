"""FID and KID next to the peers' own code: pytorch-fid, clean-fid and torch-fidelity judge img2img.

There is no network here, so every judge and img2img load the same random weights, written under
the file name each one looks for (pytorch-fid: ``pt_inception-2015-12-05-6726825d.pth`` in the
torch hub cache; torch-fidelity reads the same state_dict by path). clean-fid's network is a
TorchScript file of the TensorFlow graph, so only its resize is compared, pixel by pixel. The cheap
blocks of the network (dims 64 and 192) carry most comparisons; the full 2048-d network is checked
once, on a few images.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from img2img.default_plugins.extractors import PYTORCH_FID, fid_inception_net
from img2img.errors import Img2ImgError
from img2img.evaluation import distribution as dist
from img2img.evaluation.folder_stats import folder_features
from img2img.evaluation.metrics import evaluate_folders
from img2img.testing import write_images

pytest.importorskip("pytorch_fid")
pytest.importorskip("cleanfid")
pytest.importorskip("torch_fidelity")

from pytorch_fid.fid_score import calculate_fid_given_paths, save_fid_stats  # noqa: E402

N = 8


def random_fid_weights(path: Path) -> Path:
    """An untrained FID Inception with He-initialised convolutions (activations stay of order 1)."""
    torch.manual_seed(0)
    net = fid_inception_net()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    torch_home = root / "torch"
    weights = random_fid_weights(torch_home / "hub" / "checkpoints" / PYTORCH_FID.file)
    write_images(root / "pred", N, 48, seed=1, colour=(200, 120, 60))
    write_images(root / "target", N, 40, seed=2, colour=(60, 100, 190))
    before = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home)  # where pytorch-fid and img2img look for the file
    try:
        yield SimpleNamespace(root=root, weights=weights, pred=root / "pred", target=root / "target",
                              digest=hashlib.sha256(weights.read_bytes()).hexdigest()[:8])
    finally:
        if before is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = before


def pytorch_fid(paths, dims: int) -> float:
    return float(calculate_fid_given_paths([str(p) for p in paths], 50, "cpu", dims, num_workers=0))


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "img2img", "evaluate", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("dims", [64, 192])
def test_features_are_pytorch_fids_block_by_block(judges, dims):
    from pytorch_fid.inception import InceptionV3

    torch.manual_seed(1)
    images = torch.rand(2, 3, 50, 70)
    ours = dist.build_extractor({"name": "pytorch_fid", "dims": dims})
    theirs = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).eval()
    with torch.no_grad():
        expected = theirs(images)[0].mean((2, 3))  # what pytorch-fid's get_activations pools them to
    got = ours(images * 2 - 1)
    assert got.shape == (2, dims) and expected.abs().mean() > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dims", [64, 192])
def test_fid_equals_calculate_fid_given_paths(judges, dims):
    summary = evaluate_folders(judges.pred, judges.target, ["fid"], extractor={"name": "pytorch_fid", "dims": dims}
                               )["summary"]
    expected = pytorch_fid([judges.pred, judges.target], dims)
    assert expected > 1e-3
    assert summary["fid"] == pytest.approx(expected, rel=1e-3)
    assert summary["extractor"] == f"pytorch_fid (dims={dims})" and summary["weights"] == judges.digest
    assert summary["protocol"] == "legacy_pytorch"  # pytorch-fid's preprocessing is the extractor's default
    assert (summary["count"], summary["count_target"], summary["features"]) == (N, N, dims)


@pytest.mark.slow
def test_the_full_2048_network_gives_pytorch_fids_fid(judges, tmp_path):
    write_images(tmp_path / "a", 3, 32, seed=5, colour=(180, 90, 90))
    write_images(tmp_path / "b", 3, 32, seed=6, colour=(90, 90, 180))
    summary = evaluate_folders(tmp_path / "a", tmp_path / "b", ["fid"], extractor="pytorch_fid")["summary"]
    assert summary["features"] == 2048
    assert summary["fid"] == pytest.approx(pytorch_fid([tmp_path / "a", tmp_path / "b"], 2048), rel=1e-3)


def test_reference_statistics_round_trip_with_pytorch_fid(judges, tmp_path):
    theirs = tmp_path / "theirs.npz"
    save_fid_stats([str(judges.target), str(theirs)], 50, "cpu", 64, num_workers=0)
    folder_fid = pytorch_fid([judges.pred, judges.target], 64)

    # a pytorch-fid .npz read by img2img
    result = evaluate(str(judges.pred), "--ref-stats", str(theirs), "--metrics", "fid", "--extractor", "pytorch_fid",
                      "--dims", "64", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["summary"]["fid"] == pytest.approx(folder_fid, rel=1e-3)
    assert out["summary"]["ref_stats"] == str(theirs) and out["summary"]["count_target"] is None
    assert any("does not say how its statistics were computed" in w for w in out["warnings"])

    # an img2img .npz read by pytorch-fid
    ours = tmp_path / "stats" / "ours.npz"
    result = evaluate(str(judges.target), "--save-stats", str(ours), "--extractor", "pytorch_fid", "--dims", "64")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and f"weights {judges.digest}, protocol legacy_pytorch" in result.stdout
    assert pytorch_fid([judges.pred, ours], 64) == pytest.approx(folder_fid, rel=1e-3)
    with np.load(ours) as mine, np.load(theirs) as reference:
        np.testing.assert_allclose(mine["mu"], reference["mu"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(mine["sigma"], reference["sigma"], rtol=1e-3, atol=1e-6)
        assert str(mine["img2img_protocol"]) == "legacy_pytorch" and str(mine["img2img_count"]) == str(N)

    # img2img's own file records its setup: the table shows it, and a different protocol is pointed out
    result = evaluate(str(judges.pred), "--ref-stats", str(ours), "--metrics", "fid", "--extractor", "pytorch_fid",
                      "--dims", "64")
    assert result.returncode == 0, result.stderr
    table = " ".join(result.stdout.split())
    assert judges.digest in table and "legacy_pytorch" in table
    assert "another setup" not in result.stderr and "does not say" not in result.stderr
    res = evaluate_folders(judges.pred, None, ["fid"], extractor={"name": "pytorch_fid", "dims": 64},
                           protocol="clean", ref_stats=ours)
    assert res["summary"]["count_target"] == N
    assert any("protocol legacy_pytorch vs clean" in w for w in res["warnings"])


def test_reference_statistics_mistakes_are_named(judges, tmp_path):
    stats = tmp_path / "s.npz"
    np.savez(stats, mu=np.zeros(64), sigma=np.eye(64))
    result = evaluate(str(judges.pred), "--ref-stats", str(stats), "--metrics", "fid,kid", "--extractor",
                      "pytorch_fid", "--dims", "64")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "KID needs the features themselves" in " ".join(result.stderr.split())

    ref = {"name": "pytorch_fid", "dims": 192}
    with pytest.raises(Img2ImgError, match=r"s\.npz holds 64-dimensional statistics but the extractor gives 192"):
        evaluate_folders(judges.pred, None, ["fid"], extractor=ref, ref_stats=stats)
    (tmp_path / "text.npz").write_text("not numpy")
    with pytest.raises(Img2ImgError, match=r"text\.npz is not a numpy \.npz file"):
        evaluate_folders(judges.pred, None, ["fid"], extractor=ref, ref_stats=tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(Img2ImgError, match=r"has no mu or sigma array \(it holds mean\)"):
        evaluate_folders(judges.pred, None, ["fid"], extractor=ref, ref_stats=tmp_path / "other.npz")
    with pytest.raises(Img2ImgError, match="not both"):
        evaluate_folders(judges.pred, judges.target, ["fid"], extractor=ref, ref_stats=stats)
    from img2img.evaluation.folder_stats import save_folder_stats

    with pytest.raises(Img2ImgError, match="never writes into an input folder"):
        save_folder_stats(judges.pred, judges.pred / "s.npz", extractor=ref)
    with pytest.raises(Img2ImgError, match="must end in .npz"):
        save_folder_stats(judges.pred, tmp_path / "s.stats", extractor=ref)
    assert not (judges.pred / "s.npz").exists() and not (tmp_path / "s.stats").exists()


def test_kid_and_fid_equal_torch_fidelitys(judges):
    """torch-fidelity reads the same state_dict; its TensorFlow-compatible resize is legacy_tensorflow."""
    import torch_fidelity
    from torch_fidelity.metric_kid import kid_features_to_metric

    theirs = torch_fidelity.calculate_metrics(
        input1=str(judges.pred), input2=str(judges.target), kid=True, fid=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(judges.weights), feature_layer_kid="64", feature_layer_fid="64",
        kid_subset_size=N, cache=False, verbose=False, cuda=False, save_cpu_ram=True)
    ours = evaluate_folders(judges.pred, judges.target, ["fid", "kid"], extractor={"name": "pytorch_fid", "dims": 64},
                            protocol="legacy_tensorflow")["summary"]
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-6)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], abs=1e-4)

    # subsets smaller than the sets: the same draws as torch-fidelity's RandomState(seed)
    fake, _ = folder_features(judges.pred, extractor={"name": "pytorch_fid", "dims": 64})
    real, _ = folder_features(judges.target, extractor={"name": "pytorch_fid", "dims": 64})
    mean, std, size = dist.kid(real, fake, subsets=10, subset_size=5)
    expected = kid_features_to_metric(torch.from_numpy(fake).float(), torch.from_numpy(real).float(), kid_subsets=10,
                                      kid_subset_size=5, rng_seed=dist.KID_SEED, verbose=False)
    assert size == 5 and std > 0
    assert mean == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-4)
    assert std == pytest.approx(expected["kernel_inception_distance_std"], rel=1e-4)


@pytest.mark.parametrize("shape", [(37, 53), (64, 48), (320, 310)])
def test_resizes_equal_the_peers_pixel_by_pixel(shape):
    from cleanfid.resize import build_resizer
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3)).astype(np.uint8)
    levels = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32))

    def ours(protocol):
        return dist.resize_levels(levels, protocol, 299).numpy().transpose(1, 2, 0)

    for protocol in ("clean", "legacy_pytorch"):  # clean-fid's own resizers, on its HWC uint8 input
        expected = build_resizer(protocol)(pixels)
        assert expected.shape == (299, 299, 3)
        assert np.abs(ours(protocol) - expected).max() <= 1e-5, protocol
    expected = interpolate_bilinear_2d_like_tensorflow1x(levels[None], size=(299, 299), align_corners=False)[0]
    assert np.abs(ours("legacy_tensorflow") - expected.numpy().transpose(1, 2, 0)).max() <= 1e-5

    # and the scaling each protocol's network expects: pytorch-fid 2x - 1, the TensorFlow graph (x - 128) / 128
    image = levels / 127.5 - 1
    clean = dist.prepare(image, "clean", 299)
    np.testing.assert_allclose(clean.numpy(), (ours("clean").transpose(2, 0, 1) - 128) / 128, atol=1e-6)
    legacy = dist.prepare(image, "legacy_pytorch", 299)
    np.testing.assert_allclose(legacy.numpy(), ours("legacy_pytorch").transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    assert dist.prepare(image, "torch", 299) is image
