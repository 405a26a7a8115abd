"""PatchNCE maths on hand-made features, the projection heads and the loss's registration."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from img2img.errors import Img2ImgError
from img2img.registry import get_registry
from img2img_cut.patchnce import PatchNCELoss, ProjectionHeads, sample_patch_ids

T = 0.07


def orthonormal(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """`n` orthonormal rows of length `dim` (n <= dim)."""
    q, _ = torch.linalg.qr(torch.randn(dim, n, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def reference_loss(query: torch.Tensor, key: torch.Tensor, temperature: float) -> float:
    """Per patch: -log softmax of (positive, negatives of the same image) / T, averaged; written out by hand."""
    total, count = 0.0, 0
    for q_img, k_img in zip(query, key):
        for i in range(q_img.shape[0]):
            logits = [float(q_img[i] @ k_img[i]) / temperature]
            logits += [(float(q_img[i] @ k_img[j]) if j != i else -10.0) / temperature for j in range(k_img.shape[0])]
            top = max(logits)
            log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
            total += log_sum - logits[0]
            count += 1
    return total / count


def test_identical_query_and_key_with_orthogonal_negatives_is_nearly_free():
    features = orthonormal(16, 32).unsqueeze(0)
    loss = PatchNCELoss(T)(features, features.clone())
    # one positive at 1/T against 15 negatives at 0: log(1 + 15 exp(-1/T)) ~ 1e-5
    assert loss.item() == pytest.approx(math.log1p(15 * math.exp(-1 / T)), abs=1e-6)  # float32 at logits ~14
    assert loss.item() < 1e-4


def test_shuffled_keys_make_the_loss_high():
    features = orthonormal(16, 32).unsqueeze(0)
    shuffled = features[:, torch.roll(torch.arange(16), 1)]
    loss = PatchNCELoss(T)(features, shuffled)
    # the positive is orthogonal (0) and one negative matches (1/T): about 1/T
    assert loss.item() > 1 / T - 0.1
    assert loss.item() > 1e4 * PatchNCELoss(T)(features, features).item()


def test_matches_the_formula_written_out():
    gen = torch.Generator().manual_seed(1)
    query = F.normalize(torch.randn(2, 5, 8, generator=gen), dim=-1)
    key = F.normalize(torch.randn(2, 5, 8, generator=gen), dim=-1)
    for temperature in (0.07, 0.5):
        got = PatchNCELoss(temperature)(query, key).item()
        assert got == pytest.approx(reference_loss(query, key, temperature), rel=1e-5)


def test_negatives_come_from_the_same_image_only():
    gen = torch.Generator().manual_seed(2)
    query = F.normalize(torch.randn(2, 6, 8, generator=gen), dim=-1)
    key = F.normalize(torch.randn(2, 6, 8, generator=gen), dim=-1)
    loss = PatchNCELoss(T)
    per_image = [loss(query[i], key[i]).item() for i in range(2)]
    assert loss(query, key).item() == pytest.approx(sum(per_image) / 2, rel=1e-6)
    other = key.clone()
    other[1] = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)  # image 1's keys change, image 0's loss doesn't
    assert loss(query[:1], other[:1]).item() == pytest.approx(per_image[0], rel=1e-6)
    assert loss(query, other).item() != pytest.approx(loss(query, key).item(), rel=1e-3)


def test_gradient_reaches_the_query_only():
    query = F.normalize(torch.randn(1, 4, 8), dim=-1).requires_grad_(True)
    key = F.normalize(torch.randn(1, 4, 8), dim=-1).requires_grad_(True)
    PatchNCELoss(T)(query, key).backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    assert key.grad is None


def test_float32_under_bf16_autocast():
    query = F.normalize(torch.randn(2, 8, 16), dim=-1)
    key = F.normalize(torch.randn(2, 8, 16), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = PatchNCELoss(T)(query.bfloat16(), key.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(PatchNCELoss(T)(query.bfloat16().float(), key.bfloat16().float()).item(),
                                        rel=1e-6)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="query and key"):
        PatchNCELoss(T)(torch.randn(1, 4, 8), torch.randn(1, 5, 8))


def test_heads_project_the_same_locations_to_unit_vectors():
    torch.manual_seed(0)
    heads = ProjectionHeads([3, 16], units=32, init_gain=1.0)  # outputs well above the 1e-7 epsilon
    feats = [torch.randn(2, 3, 10, 10), torch.randn(2, 16, 5, 5)]
    ids = sample_patch_ids(feats, 64, torch.Generator().manual_seed(0))
    assert [len(i) for i in ids] == [64, 25]  # capped at the number of locations
    assert len(set(ids[0].tolist())) == 64
    out = heads(feats, ids)
    assert [tuple(o.shape) for o in out] == [(2, 64, 32), (2, 25, 32)]
    for o in out:
        assert torch.allclose(o.norm(dim=-1), torch.ones(o.shape[:2]), atol=1e-5)
    # patch p of the output is the MLP of the feature vector at location ids[p]
    loc = int(ids[1][3])
    expected = heads.mlps[1](feats[1][1, :, loc // 5, loc % 5])
    assert torch.allclose(out[1][1, 3], F.normalize(expected, dim=0), atol=1e-5)


def test_fresh_heads_start_small_as_in_the_reference():
    heads = ProjectionHeads([8], units=16)
    weights = [m.weight for m in heads.modules() if isinstance(m, torch.nn.Linear)]
    assert all(w.std() < 0.01 for w in weights)  # xavier-normal with gain 0.02
    assert all(m.bias.abs().sum() == 0 for m in heads.modules() if isinstance(m, torch.nn.Linear))


def test_patch_sampling_is_reproducible():
    feats = [torch.zeros(1, 4, 16, 16)]
    first = sample_patch_ids(feats, 20, torch.Generator().manual_seed(5))
    again = sample_patch_ids(feats, 20, torch.Generator().manual_seed(5))
    assert torch.equal(first[0], again[0])


def test_registered_through_the_plugin_with_validated_parameters():
    registry = get_registry()
    component = registry.get("loss", "patchnce")
    assert component.distribution == "img2img-cut" and component.version == "0.2.0"
    loss = registry.build("loss", {"name": "patchnce", "weight": 10.0, "temperature": 0.2})
    assert isinstance(loss, PatchNCELoss) and loss.temperature == 0.2
    with pytest.raises(Img2ImgError, match="temperature"):
        registry.build("loss", {"name": "patchnce", "temperature": 0})
