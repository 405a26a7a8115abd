"""FID/KID (img2img.evaluation.distribution) against direct numpy/scipy computations, the resize
protocols, the weight-free random_conv extractor and `img2img evaluate --extractor`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from img2img.testing import write_images
from img2img.evaluation import distribution as dist


def feature_sets(seed: int = 0, n_real: int = 40, n_fake: int = 30, d: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    real = rng.normal(size=(n_real, d)) @ mix
    fake = rng.normal(loc=0.4, scale=1.3, size=(n_fake, d)) @ mix
    return real, fake


def scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_r @ s_f).real
    diff = real.mean(0) - fake.mean(0)
    return float(diff @ diff + np.trace(s_r) + np.trace(s_f) - 2 * np.trace(covmean))


def numpy_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimator written out term by term, with explicit loops over the pairs."""
    d, m, n = x.shape[1], len(x), len(y)

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return float(xx + yy - 2 * xy)


def test_fid_equals_scipy_within_1e_6() -> None:
    real, fake = feature_sets()
    expected = scipy_fid(real, fake)
    assert expected > 1.0
    assert dist.fid(real, fake) == pytest.approx(expected, rel=1e-6)
    assert dist.fid(real, real) == pytest.approx(0.0, abs=1e-9 * expected)


def test_kid_equals_a_direct_numpy_computation_within_1e_6() -> None:
    real, fake = feature_sets(1, n_real=25, n_fake=25)
    mean, std, size = dist.kid(real, fake)
    assert (std, size) == (0.0, 25)  # both sets whole: one subset
    assert mean == pytest.approx(numpy_mmd2(real, fake), rel=1e-6)

    # subsets, drawn as documented (torch-fidelity's way): RandomState(seed).choice without
    # replacement, the translated set first
    real, fake = feature_sets(2, n_real=30, n_fake=24)
    mean, std, size = dist.kid(real, fake, subsets=7, subset_size=12, seed=5)
    rng = np.random.RandomState(5)
    values = []
    for _ in range(7):
        f = fake[rng.choice(24, 12, replace=False)]
        r = real[rng.choice(30, 12, replace=False)]
        values.append(numpy_mmd2(r, f))
    assert size == 12
    assert mean == pytest.approx(np.mean(values), rel=1e-6) and std == pytest.approx(np.std(values), rel=1e-6)
    assert std > 0


def test_small_sets_get_a_fid_warning_that_suggests_kid() -> None:
    assert dist.fid_warning(3000, 2500, 2048) is None
    note = dist.fid_warning(500, 2500, 2048)
    assert "500 images" in note and "2048" in note and "KID" in note


def test_features_are_the_same_in_any_batch_size() -> None:
    torch.manual_seed(0)
    images = [torch.rand(3, 24, 24) * 2 - 1 for _ in range(7)]
    net = dist.build_extractor("random_conv")
    one = dist.features(dist.batched(images, 1), net, "cpu")
    many = dist.features(dist.batched(images, 4), net, "cpu")
    assert one.shape == (7, net.num_features) and one.dtype == np.float64
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_on_the_gpu_match_the_cpu() -> None:
    torch.manual_seed(0)
    images = [torch.rand(3, 40, 40) * 2 - 1 for _ in range(6)]
    net = dist.build_extractor("random_conv")
    cpu = dist.features(dist.batched(images, 3), net, "cpu")
    gpu = dist.features(dist.batched(images, 3), net.to("cuda"), "cuda")
    np.testing.assert_allclose(cpu, gpu, rtol=1e-3, atol=1e-4)


def test_clean_resize_is_pil_bicubic_per_channel_on_8_bit_values() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 20, 30)).astype(np.uint8)
    image = torch.from_numpy(pixels.astype(np.float32)) / 127.5 - 1
    out = dist.clean_resize(image, 48)
    assert out.shape == (3, 48, 48)
    for c in range(3):  # clean-fid: each channel as a float ('F') image, bicubic, clipped to 0..255
        expected = np.asarray(Image.fromarray(pixels[c]).convert("F").resize((48, 48), Image.BICUBIC))
        np.testing.assert_allclose(((out[c] + 1) * 127.5).numpy(), np.clip(expected, 0, 255), atol=1e-3)


def test_grey_and_rgba_reach_the_extractor_as_rgb() -> None:
    grey = torch.full((1, 1, 4, 4), 0.5)
    assert torch.equal(dist.as_rgb(grey), torch.full((1, 3, 4, 4), 0.5))
    rgba = torch.cat([torch.full((1, 3, 4, 4), -1.0), torch.full((1, 1, 4, 4), -1.0)], 1)  # transparent black
    assert torch.allclose(dist.as_rgb(rgba), torch.ones(1, 3, 4, 4))  # over white


# ---------------------------------------------------------------------------------------------
# random_conv: the same features on every machine


def splitmix64_reference(seed: int, stream: int, count: int) -> list[float]:
    """splitmix64 in plain Python integers, independent of numpy."""
    mask = (1 << 64) - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    key = mix((seed & 0xFFFFFFFF) << 20 | stream)
    return [(mix((key + i * 0x9E3779B97F4A7C15) & mask) >> 11) * (2.0 / 2**53) - 1.0 for i in range(1, count + 1)]


def test_random_conv_weights_come_from_splitmix64_not_from_torch() -> None:
    from img2img.default_plugins.extractors import RandomConvFeatures, fixed_uniform

    assert fixed_uniform(7, 2, 50).tolist() == splitmix64_reference(7, 2, 50)
    state = torch.random.get_rng_state()
    torch.manual_seed(123)
    a = RandomConvFeatures(seed=0)
    torch.manual_seed(456)
    b = RandomConvFeatures(seed=0)
    torch.random.set_rng_state(state)
    for name, buffer in a.named_buffers():
        assert torch.equal(buffer, dict(b.named_buffers())[name])
    expected = np.float32(splitmix64_reference(0, 0, 3)[0] * np.sqrt(6.0 / 27))
    assert a.w0.flatten()[0].item() == expected
    assert not torch.equal(RandomConvFeatures(seed=1).w0, a.w0)


def test_random_conv_separates_two_domains(tmp_path: Path) -> None:
    from img2img.data import read_image, to_tensor

    warm = write_images(tmp_path / "warm", 12, 32, seed=1, colour=(220, 120, 60))
    warm2 = write_images(tmp_path / "warm2", 12, 32, seed=5, colour=(220, 120, 60))
    cool = write_images(tmp_path / "cool", 12, 32, seed=2, colour=(40, 90, 200))
    net = dist.build_extractor({"name": "random_conv", "width": 8})
    assert net.num_features == 2 * (3 + 8 + 16 + 32 + 32)

    def feats(files):
        return dist.features(dist.batched((to_tensor(read_image(f, 3)) for f in files), 8), net, "cpu")

    same = dist.kid(feats(warm), feats(warm2))[0]
    other = dist.kid(feats(warm), feats(cool))[0]
    assert other > 20 * abs(same)


# ---------------------------------------------------------------------------------------------
# img2img evaluate


def test_evaluate_with_an_extractor_and_the_clean_protocol(tmp_path: Path) -> None:
    write_images(tmp_path / "pred", 6, 40, seed=1, colour=(220, 120, 60))
    write_images(tmp_path / "target", 6, 40, seed=2, colour=(40, 90, 200))
    runs = {}
    for protocol in ("clean", "torch"):
        result = subprocess.run(
            [sys.executable, "-m", "img2img", "evaluate", str(tmp_path / "pred"), str(tmp_path / "target"),
             "--metrics", "fid,kid", "--extractor", "random_conv", "--resize-protocol", protocol, "--json"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
        assert result.returncode == 0, result.stderr
        runs[protocol] = json.loads(result.stdout)
        summary = runs[protocol]["summary"]
        assert summary["extractor"] == "random_conv" and summary["protocol"] == protocol
        assert summary["weights"] == "none" and summary["count"] == summary["count_target"] == 6
        assert summary["kid"] > 0 and summary["fid"] > 0 and summary["features"] == 358
        # 6 images for 358 features: FID is unstable, and the command says so on stderr
        assert "warning: FID on 6 images" in result.stderr and "KID" in result.stderr
        assert runs[protocol]["warnings"]
    # the two protocols resize differently (PIL bicubic from 8 bits vs torch bilinear), so they differ a little
    assert runs["clean"]["summary"]["kid"] != runs["torch"]["summary"]["kid"]
    assert runs["clean"]["summary"]["kid"] == pytest.approx(runs["torch"]["summary"]["kid"], rel=0.2)

    bad = subprocess.run([sys.executable, "-m", "img2img", "evaluate", str(tmp_path / "pred"), str(tmp_path / "target"),
                          "--metrics", "kid", "--extractor", "randomconv"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "did you mean 'random_conv'" in bad.stderr and "Traceback" not in bad.stderr
