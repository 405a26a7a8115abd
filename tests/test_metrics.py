"""Evaluation metrics: paired scores against numpy, FID/KID against a direct scipy/numpy computation."""
from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from rich.console import Console
from torch import nn

from img2img.errors import Img2ImgError
from img2img.evaluation.metrics import (
    INCEPTION_FILE,
    INCEPTION_URL,
    evaluate_folders,
    paired_scores,
    render_table,
    to_json,
    write_csv,
)


def photo(rng: np.random.Generator, size: int = 32, bright: float = 0.0) -> np.ndarray:
    """A smooth, photo-like RGB image in [0, 1]: shaded luminance, soft blobs, a mild colour cast, grain."""
    y, x = np.mgrid[0:size, 0:size] / size
    luma = rng.uniform(-0.3, 0.3) * x + rng.uniform(-0.3, 0.3) * y + rng.uniform(0.3, 0.6)
    tint = np.zeros((size, size, 3))
    for _ in range(3):
        cx, cy, radius = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.1, 0.3)]
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        luma = luma + blob * rng.uniform(-0.3, 0.3)
        tint += blob[..., None] * rng.uniform(-0.12, 0.12, 3)
    image = luma[..., None] + tint + rng.uniform(-0.05, 0.05, 3) + rng.normal(0, 0.02, (size, size, 3)) + bright
    return np.clip(image, 0, 1)


def save(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image * 255).astype(np.uint8).squeeze()).save(path)
    return path


def load01(path: Path) -> np.ndarray:
    """The reference reader: PIL, RGB, float64 in [0, 1]."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def folder(root: Path, n: int, seed: int, size: int = 32, bright: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        save(root / f"img_{i:02d}.png", photo(rng, size, bright))
    return root


# --------------------------------------------------------------------------------------------
# paired metrics


def test_a_folder_against_itself_is_perfect(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a.png", "nested/b.png", "nested/deeper/c.png"):
        image = photo(rng)
        save(tmp_path / "pred" / name, image)
        save(tmp_path / "target" / name, image)
    result = evaluate_folders(tmp_path / "pred", tmp_path / "target", ("psnr", "ssim", "mae"))

    assert result["summary"]["psnr"] == math.inf
    assert result["summary"]["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert result["summary"]["mae"] == 0.0
    assert result["summary"]["count"] == 3
    assert [row["name"] for row in result["per_image"]] == ["a", "nested/b", "nested/deeper/c"]
    assert all(row["psnr"] == math.inf for row in result["per_image"])
    data = json.loads(to_json(result))  # strict JSON: infinity is written as a string
    assert data["summary"]["psnr"] == "inf" and data["per_image"][0]["psnr"] == "inf"


def test_noisy_copy_matches_a_direct_numpy_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(4):
        image = photo(rng)
        save(tmp_path / "target" / f"{i}.png", image)
        save(tmp_path / "pred" / f"{i}.png", np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1))
    result = evaluate_folders(tmp_path / "pred", tmp_path / "target", ["psnr", "ssim", "mae"])

    psnrs, maes = [], []
    for i in range(4):
        pred, target = load01(tmp_path / "pred" / f"{i}.png"), load01(tmp_path / "target" / f"{i}.png")
        psnrs.append(10 * np.log10(1.0 / np.mean((pred - target) ** 2)))
        maes.append(np.mean(np.abs(pred - target)))
    by_name = {row["name"]: row for row in result["per_image"]}
    for i in range(4):
        assert by_name[str(i)]["psnr"] == pytest.approx(psnrs[i], rel=1e-5)
        assert by_name[str(i)]["mae"] == pytest.approx(maes[i], rel=1e-5)
        assert 0.2 < by_name[str(i)]["ssim"] < 0.99
    assert 20 < result["summary"]["psnr"] < 35
    assert result["summary"]["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-5)
    assert result["summary"]["mae"] == pytest.approx(np.mean(maes), rel=1e-5)


def test_grayscale_against_colour_gives_a_moderate_psnr(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image = photo(rng, size=48)
    save(tmp_path / "colour" / "x.png", image)
    Image.fromarray(np.round(image * 255).astype(np.uint8)).convert("L").save(tmp_path / "gray.png")
    (tmp_path / "grey").mkdir()
    (tmp_path / "gray.png").rename(tmp_path / "grey" / "x.png")
    result = evaluate_folders(tmp_path / "grey", tmp_path / "colour", ("psnr", "ssim", "mae"))
    assert 15 < result["summary"]["psnr"] < 45
    assert 0 < result["summary"]["mae"] < 0.2


def test_flat_predictions_pair_with_nested_targets_by_file_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    image = photo(rng)
    save(tmp_path / "target" / "train" / "horse.png", image)
    save(tmp_path / "pred" / "horse.png", image)
    result = evaluate_folders(tmp_path / "pred", tmp_path / "target", ["mae"])
    assert result["per_image"] == [{"name": "horse", "mae": 0.0}]


def test_unmatched_files_are_listed(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    save(tmp_path / "pred" / "same.png", photo(rng))
    save(tmp_path / "target" / "same.png", photo(rng))
    save(tmp_path / "pred" / "only_pred.png", photo(rng))
    save(tmp_path / "target" / "only_target.png", photo(rng))
    with pytest.raises(Img2ImgError) as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "target")
    message = str(err.value)
    assert "only_pred.png" in message and "only_target.png" in message and "same.png" not in message


def test_pairs_of_different_sizes_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    save(tmp_path / "pred" / "p.png", photo(rng, size=32))
    save(tmp_path / "target" / "p.png", photo(rng, size=40))
    with pytest.raises(Img2ImgError, match=r"p\.png is 32x32 but its target .*p\.png is 40x40"):
        evaluate_folders(tmp_path / "pred", tmp_path / "target", ["psnr"])


def test_unknown_metric_suggests_the_close_name(tmp_path: Path) -> None:
    folder(tmp_path / "a", 1, seed=0)
    with pytest.raises(Img2ImgError, match="unknown metric 'pnsr'; did you mean 'psnr'"):
        evaluate_folders(tmp_path / "a", tmp_path / "a", ["pnsr"])


def test_missing_and_empty_folders_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    folder(tmp_path / "a", 1, seed=0)
    with pytest.raises(Img2ImgError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", tmp_path / "a")
    with pytest.raises(Img2ImgError, match="contains no images"):
        evaluate_folders(tmp_path / "a", tmp_path / "empty")


def test_paired_scores_of_a_batch() -> None:
    torch.manual_seed(0)
    target = torch.rand(3, 3, 32, 32)
    assert paired_scores(target, target.clone()) == {"psnr": math.inf, "ssim": pytest.approx(1.0), "mae": 0.0}
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    scores = paired_scores(pred, target)
    diff = (pred - target).double().numpy()
    expected_psnr = np.mean([10 * np.log10(1 / np.mean(d**2)) for d in diff])
    assert scores["psnr"] == pytest.approx(expected_psnr, rel=1e-6)
    assert scores["mae"] == pytest.approx(np.abs(diff).mean(), rel=1e-6)
    assert 0 < scores["ssim"] < 1


def test_csv_and_table(tmp_path: Path) -> None:
    folder(tmp_path / "a", 2, seed=6)
    result = evaluate_folders(tmp_path / "a", tmp_path / "a", ("psnr", "mae"))
    path = write_csv(result, tmp_path / "out" / "scores.csv")
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["name"] for row in rows] == ["img_00", "img_01", "(summary)"]
    assert rows[0]["psnr"] == "inf" and float(rows[0]["mae"]) == 0.0
    assert rows[-1]["count"] == "2"

    console = Console(record=True, width=80)
    console.print(render_table(result))
    text = console.export_text()
    assert "psnr" in text and "inf" in text and "images" in text


# --------------------------------------------------------------------------------------------
# distribution metrics


class TinyFeatures(nn.Module):
    """A random conv net standing in for Inception: [B, 3, H, W] in [-1, 1] -> [B, 8]."""

    input_size = 32

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.Tanh(), nn.Conv2d(8, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 10


def features(extractor: nn.Module, root: Path) -> np.ndarray:
    """The reference features: PIL-read images mapped to [-1, 1], one batch, float64."""
    images = [load01(p).astype(np.float32) * 2 - 1 for p in sorted(root.glob("*.png"))]
    batch = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2))
    return extractor(batch).double().numpy()


def reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def reference_kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 over the whole sets."""
    d, m = real.shape[1], real.shape[0]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    k_xx, k_yy, k_xy = k(real, real), k(fake, fake), k(real, fake)
    off = lambda kk: (kk.sum() - np.trace(kk)) / (m * (m - 1))  # noqa: E731
    return float(off(k_xx) + off(k_yy) - 2 * k_xy.mean())


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sets")
    return folder(root / "dark", 20, seed=10), folder(root / "bright", 20, seed=11, bright=0.25)


def test_fid_and_kid_match_scipy_and_numpy(two_sets: tuple[Path, Path]) -> None:
    pred, target = two_sets
    extractor = TinyFeatures()
    result = evaluate_folders(
        pred, target, ["fid", "kid"], feature_extractor=extractor, kid_subset_size=20, batch_size=6
    )
    fake, real = features(extractor, pred), features(extractor, target)

    expected_fid = reference_fid(real, fake)
    assert expected_fid > 1.0
    assert result["summary"]["fid"] == pytest.approx(expected_fid, rel=1e-6)
    assert result["summary"]["kid"] == pytest.approx(reference_kid(real, fake), rel=1e-6)
    assert result["summary"]["kid_std"] == 0.0  # one subset holding every image
    assert result["summary"]["count"] == 20 and result["summary"]["count_target"] == 20
    assert result["summary"]["features"] == 8 and result["summary"]["protocol"] == "torch"
    assert result["per_image"] == []
    # 20 images and 8 features: FID is estimable, so no warning
    assert result["warnings"] == []


def test_fid_of_a_folder_with_itself_is_zero(two_sets: tuple[Path, Path]) -> None:
    pred, target = two_sets
    extractor = TinyFeatures()
    same = evaluate_folders(pred, pred, ["fid"], feature_extractor=extractor)["summary"]["fid"]
    other = evaluate_folders(pred, target, ["fid"], feature_extractor=extractor)["summary"]["fid"]
    assert same == pytest.approx(0.0, abs=1e-6 * other)
    assert other > 1.0


def test_kid_subsets_are_reproducible_and_bounded(two_sets: tuple[Path, Path]) -> None:
    pred, target = two_sets
    extractor = TinyFeatures()
    first = evaluate_folders(pred, target, ["kid"], feature_extractor=extractor, kid_subset_size=8)["summary"]
    second = evaluate_folders(pred, target, ["kid"], feature_extractor=extractor, kid_subset_size=8)["summary"]
    assert first["kid"] == second["kid"] and first["kid_std"] > 0 and first["kid_subset_size"] == 8
    real, fake = features(extractor, target), features(extractor, pred)
    assert first["kid"] == pytest.approx(reference_kid(real, fake), rel=0.5)  # subsets of 8 scatter around it
    with pytest.raises(Img2ImgError, match="KID subset size must be between 2 and the number of images"):
        evaluate_folders(pred, target, ["kid"], feature_extractor=extractor, kid_subset_size=21)
    default = evaluate_folders(pred, target, ["kid"], feature_extractor=extractor)["summary"]
    assert default["kid_subset_size"] == 20


def test_missing_inception_weights_explain_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert torch.hub.get_dir().startswith(str(tmp_path))
    folder(tmp_path / "a", 2, seed=0)
    with pytest.raises(Img2ImgError) as err:
        evaluate_folders(tmp_path / "a", tmp_path / "a", ["psnr", "fid"])
    message = str(err.value)
    assert "the inception_v3 weights are not in the torch hub cache" in message
    assert INCEPTION_URL in message and "--feature-weights" in message
    assert "img2img weights download inception_v3" in message and "--extractor random_conv" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE) in message

    with pytest.raises(Img2ImgError, match="nope.pth does not exist"):
        evaluate_folders(tmp_path / "a", tmp_path / "a", ["kid"], feature_weights=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(Img2ImgError, match="junk.pth is not a torchvision Inception v3 state_dict"):
        evaluate_folders(tmp_path / "a", tmp_path / "a", ["kid"], feature_weights=tmp_path / "junk.pth")
    with pytest.raises(Img2ImgError, match="'random_conv' reads no weights file"):
        evaluate_folders(tmp_path / "a", tmp_path / "a", ["kid"], extractor="random_conv",
                         feature_weights=tmp_path / "junk.pth")


def test_inception_weights_are_read_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import inception_v3

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE
    cache.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), cache)
    folder(tmp_path / "a", 3, seed=1)
    folder(tmp_path / "b", 3, seed=2, bright=0.3)
    result = evaluate_folders(tmp_path / "a", tmp_path / "b", ["kid", "fid"], kid_subset_size=3)
    summary = result["summary"]
    assert math.isfinite(summary["kid"]) and summary["kid_std"] == 0.0
    assert summary["features"] == 2048 and summary["extractor"] == "inception_v3"
    # the result names the weights file it used by its sha256, and the protocol (inception_v3 resizes itself)
    assert summary["weights"] == hashlib.sha256(cache.read_bytes()).hexdigest()[:8] and summary["protocol"] == "torch"
    # 3 images cannot estimate a 2048 x 2048 covariance: the result says so and suggests KID
    assert len(result["warnings"]) == 1 and "not stable" in result["warnings"][0] and "KID" in result["warnings"][0]
