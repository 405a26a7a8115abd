"""Padding to a generator's multiple, tile placement, blending weights and global instance-norm statistics."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from img2img.default_plugins.resnet import resnet_6blocks
from img2img.errors import Img2ImgError
from img2img.inference.padding import SizeAdapter, pad_to_multiple
from img2img.inference.tiling import (AUTO_OVERLAP, AUTO_TILE, InstanceNormStats, _axis_weights, blend_weights,
                                      check_tiling, effective_tile, ramp, tile_plan, tile_spans, translate_tiled)


def smooth_image(h: int, w: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A photo-like 1xCxHxW image in [-1, 1]: smooth gradients plus mild texture."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, channels, 6, 6, generator=g)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    img = img + 0.08 * torch.randn(1, channels, h, w, generator=g)
    return img.clamp(0, 1) * 2 - 1


# -- padding -------------------------------------------------------------------------------------

def test_pad_reflects_like_torch_when_the_padding_is_shorter_than_the_image():
    x = torch.randn(2, 3, 37, 53)
    padded = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (40, 56)
    assert torch.equal(padded, F.pad(x, (0, 3, 0, 3), mode="reflect"))


def test_pad_longer_than_the_image_reflects_then_replicates():
    x = torch.arange(5.0).reshape(1, 1, 1, 5).expand(1, 1, 20, 5)
    padded = pad_to_multiple(x, 16)
    assert padded.shape[-2:] == (32, 16)
    # 0 1 2 3 4 | 3 2 1 0 | then row/column 0 repeated
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1, 0] + [0] * 7
    assert pad_to_multiple(x, 1) is x


@pytest.mark.parametrize("size", [(37, 53), (20, 20), (16, 33)])
def test_size_adapter_returns_the_input_size(size):
    seen = []

    class NeedsMultiple(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            assert x.shape[-2] % 128 == 0 and x.shape[-1] % 128 == 0
            return -x

    x = torch.randn(1, 3, *size)
    y = SizeAdapter(NeedsMultiple(), 128)(x)
    assert y.shape == x.shape and torch.equal(y, -x)
    assert seen == [(128, 128)]


# -- tiles and weights ---------------------------------------------------------------------------

@pytest.mark.parametrize("size,tile,overlap,multiple", [(100, 32, 8, 4), (301, 128, 32, 4), (1000, 256, 32, 256),
                                                         (64, 64, 16, 4), (513, 512, 64, 4), (300, 64, 48, 4)])
def test_tiles_cover_the_axis_with_aligned_starts_and_enough_overlap(size, tile, overlap, multiple):
    spans = tile_spans(size, tile, overlap, multiple)
    assert spans[0][0] == 0 and spans[-1][1] == size
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s1 > s0 and e0 - s1 >= overlap  # neighbours share at least `overlap` pixels
    for s, e in spans:
        assert e - s >= min(tile, size)
        assert e - s < tile + multiple
    if len(spans) > 1:
        assert all(s % (multiple if multiple <= tile - overlap else 128) == 0 for s, _ in spans)


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 8), (301, 128, 32), (1000, 256, 32), (513, 512, 64)])
def test_raised_cosine_weights_of_neighbours_sum_to_one(size, tile, overlap):
    spans = tile_spans(size, tile, overlap, 4)
    total = np.zeros(size)
    for (s, e), w in zip(spans, _axis_weights(spans)):
        assert w.min() > 0 and w.max() == 1.0
        total[s:e] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_ramp_is_one_inside_and_smooth_over_the_overlap():
    w = ramp(64, 16, 8)
    assert np.all(w[16:56] == 1.0)
    assert np.all(np.diff(w[:16]) > 0) and np.all(np.diff(w[56:]) < 0)
    np.testing.assert_allclose(ramp(16, 16, 0) + ramp(16, 0, 16), 1.0)


def test_normalised_blend_weights_sum_to_one_everywhere():
    h, w = 150, 97
    total = np.zeros((h, w))
    for (t, b, l, r), weight in blend_weights(h, w, 48, 20, 4):
        total[t:b, l:r] += weight
    assert total.min() > 0
    normalised = np.zeros((h, w))
    for (t, b, l, r), weight in blend_weights(h, w, 48, 20, 4):
        normalised[t:b, l:r] += weight / total[t:b, l:r]
    np.testing.assert_allclose(normalised, 1.0, atol=1e-6)


def test_tiling_a_pointwise_function_reproduces_it_exactly():
    image = smooth_image(150, 97)
    calls = []

    def run(batch):
        calls.append(batch.shape[0])
        return torch.tanh(batch * 1.7) * 0.5

    out = translate_tiled(image, run, tile=48, overlap=20, multiple=4, batch_size=4)
    assert out.shape == image.shape
    torch.testing.assert_close(out, run(image), atol=1e-6, rtol=0)
    assert max(calls[:-1]) == 4  # tiles of one shape go in batches


def test_tile_plan_tiles_only_what_needs_it():
    assert tile_plan(100, 100, tile=128, overlap=None, max_pixels=None, multiple=4) is None
    assert tile_plan(100, 300, tile=128, overlap=None, max_pixels=None, multiple=4) == (128, 32)
    assert tile_plan(100, 300, tile=130, overlap=16, max_pixels=None, multiple=4) == (128, 16)
    assert tile_plan(2000, 2000, tile=None, overlap=None, max_pixels=10**6, multiple=4) == (AUTO_TILE, AUTO_OVERLAP)
    assert tile_plan(900, 1000, tile=None, overlap=None, max_pixels=10**6, multiple=4) is None
    assert effective_tile(300, 256) == 256 and effective_tile(100, 256) == 256


@pytest.mark.parametrize("kwargs,message", [
    (dict(tile=8, overlap=None, max_pixels=None, tile_norm="global"), "at least 16"),
    (dict(tile=64, overlap=64, max_pixels=None, tile_norm="global"), "smaller than --tile"),
    (dict(tile=None, overlap=-1, max_pixels=None, tile_norm="global"), ">= 0"),
    (dict(tile=None, overlap=None, max_pixels=0, tile_norm="global"), "positive"),
    (dict(tile=None, overlap=None, max_pixels=None, tile_norm="batch"), "global"),
])
def test_impossible_tiling_options_are_user_errors(kwargs, message):
    with pytest.raises(Img2ImgError, match=message):
        check_tiling(**kwargs)


# -- instance-norm statistics --------------------------------------------------------------------

@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return resnet_6blocks(3, 3, ngf=8, init="kaiming").eval()


def test_statistics_of_the_full_image_reproduce_the_untiled_output_exactly(generator):
    image = smooth_image(64, 80)
    with torch.inference_mode():
        plain = generator(image)
    stats = InstanceNormStats.capture(generator, image, size=1000, multiple=4)
    assert len(stats) == sum(isinstance(m, nn.InstanceNorm2d) for m in generator.modules())
    with stats.applied(generator), torch.inference_mode():
        fixed = generator(image)
    torch.testing.assert_close(fixed, plain, atol=1e-5, rtol=0)


def test_applied_statistics_are_removed_afterwards_even_after_an_error(generator):
    image = smooth_image(32, 32)
    stats = InstanceNormStats.capture(generator, image, size=32, multiple=4)
    norms = [m for m in generator.modules() if isinstance(m, nn.InstanceNorm2d)]
    with pytest.raises(ZeroDivisionError):
        with stats.applied(generator):
            assert all("forward" in m.__dict__ for m in norms)
            raise ZeroDivisionError
    assert not any("forward" in m.__dict__ for m in norms)
    other = smooth_image(32, 32, seed=5)
    with torch.inference_mode():
        assert not torch.allclose(generator(other), generator(image))


def test_shared_statistics_remove_most_of_the_tiling_difference(generator):
    image = smooth_image(256, 256, seed=3)
    adapter = SizeAdapter(generator, 4)
    with torch.inference_mode():
        untiled = adapter(image)
        local = translate_tiled(image, adapter, tile=128, overlap=48, multiple=4)
        stats = InstanceNormStats.capture(generator, image, size=256, multiple=4)  # whole image, full size
        with stats.applied(generator):
            shared = translate_tiled(image, adapter, tile=128, overlap=48, multiple=4)
    err_local = (local - untiled).abs().mean().item() * 127.5  # 0-255 units
    err_shared = (shared - untiled).abs().mean().item() * 127.5
    assert err_shared < 0.2 * err_local and err_shared < 3


def test_downscaled_statistics_make_neighbouring_tiles_agree(generator):
    """Where two tiles overlap, both normalise by the same statistics, so their outputs agree better."""
    image = smooth_image(128, 224, seed=4)
    adapter = SizeAdapter(generator, 4)
    left, right = image[:, :, :, :128], image[:, :, :, 96:]
    with torch.inference_mode():
        local = (adapter(left)[..., 96:] - adapter(right)[..., :32]).abs().mean()
        stats = InstanceNormStats.capture(generator, image, size=128, multiple=4)
        with stats.applied(generator):
            shared = (adapter(left)[..., 96:] - adapter(right)[..., :32]).abs().mean()
    assert shared < local


# -- auto: global or local statistics, chosen per image ---------------------------------------------

def noise_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(("make", "expected"), [(smooth_image, "global"), (noise_image, "local")],
                         ids=["photo-like", "white-noise"])
def test_auto_picks_the_statistics_that_err_less(generator, make, expected):
    """Downscaled statistics suit smooth content and fail on noise, where each tile's own hold; auto
    picks per image, and its choice is the one with the smaller difference from the untiled output."""
    from img2img.inference.tiling import choose_tile_norm

    image = make(256, 256)
    adapter = SizeAdapter(generator, 4)
    with torch.inference_mode():
        untiled = adapter(image)
        local = translate_tiled(image, adapter, tile=96, overlap=16, multiple=4)
        stats = InstanceNormStats.capture(generator, image, size=96, multiple=4)
        with stats.applied(generator):
            shared = translate_tiled(image, adapter, tile=96, overlap=16, multiple=4)
    errors = {"local": (local - untiled).abs().mean().item(), "global": (shared - untiled).abs().mean().item()}
    assert min(errors, key=errors.get) == expected
    assert choose_tile_norm(generator, image, tile=96, overlap=16, multiple=4, stats_size=96) == expected


def test_auto_is_the_default_and_matches_the_mode_it_chose(generator):
    from img2img.inference.translator import Translator

    image = ((noise_image(200, 200, seed=2)[0].permute(1, 2, 0) + 1) / 2).numpy()
    auto = Translator.from_module(generator, device="cpu", tile=96, overlap=16)
    assert auto.tile_norm == "auto"
    local = Translator.from_module(generator, device="cpu", tile=96, overlap=16, tile_norm="local")
    np.testing.assert_array_equal(auto.translate_arrays([image])[0], local.translate_arrays([image])[0])
    with pytest.raises(Img2ImgError, match="use 'auto' \\(chosen per image\\), 'global'"):
        check_tiling(64, 8, None, "both")
