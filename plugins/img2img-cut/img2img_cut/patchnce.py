"""PatchNCE (Park et al. 2020): a patch of the output should match the input patch at the same place.

For one encoder layer, `ProjectionHeads` samples the same patch locations from the input's and the
output's features and projects them with a 2-layer MLP onto the unit sphere; `PatchNCELoss` then
scores each output patch (query) against its input patch (positive key) and the other sampled
patches of the same image (negatives) with a cross-entropy over cosine similarities / temperature.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

DIAGONAL_LOGIT = -10.0
"""Similarity given to a query and its own key among the negatives (the reference's mask value)."""


class PatchNCELoss(nn.Module):
    """InfoNCE over patches: ``forward(query, key)`` with ``[B, P, C]`` (or ``[P, C]``) unit vectors.

    The key is the positive for the query at the same index; the other P - 1 keys of the same image
    are the negatives (the reference's ``nce_includes_all_negatives_from_minibatch=False``). Keys
    get no gradient. The cross-entropy is computed in float32, also under autocast.
    """

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.temperature = temperature

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        if query.shape != key.shape or query.dim() not in (2, 3):
            raise ValueError(f"query and key must both be [B, P, C] or [P, C]; got {tuple(query.shape)} "
                             f"and {tuple(key.shape)}")
        if query.dim() == 2:
            query, key = query.unsqueeze(0), key.unsqueeze(0)
        with torch.autocast(query.device.type, enabled=False):
            q, k = query.float(), key.detach().float()
            n_patches = q.shape[1]
            positive = (q * k).sum(dim=-1, keepdim=True)  # [B, P, 1]
            negative = torch.bmm(q, k.transpose(1, 2))  # [B, P, P]
            own = torch.eye(n_patches, dtype=torch.bool, device=q.device)
            negative = negative.masked_fill(own, DIAGONAL_LOGIT)
            logits = torch.cat([positive, negative], dim=-1).flatten(0, 1) / self.temperature
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, target)


def patchnce(*, temperature: Annotated[float, Field(gt=0)] = 0.07) -> nn.Module:
    """PatchNCE contrastive loss on sampled patch features (CUT, FastCUT)."""
    return PatchNCELoss(temperature)


class ProjectionHeads(nn.Module):
    """One 2-layer MLP per feature layer, applied to sampled patches, outputs L2-normalised.

    The reference (``PatchSampleF``) creates its MLPs on the first batch; here the input widths
    are known when the task is built, so the heads exist before the optimiser does.
    """

    def __init__(self, in_channels: Sequence[int], units: int = 256, init_gain: float = 0.02):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, units), nn.ReLU(), nn.Linear(units, units)) for c in in_channels
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):  # the reference's xavier-normal, gain 0.02
                nn.init.xavier_normal_(m.weight, gain=init_gain)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor], patch_ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``features[i]`` is ``[B, C_i, H_i, W_i]``; returns ``[B, P_i, units]`` unit vectors in float32."""
        if len(features) != len(self.mlps) or len(patch_ids) != len(self.mlps):
            raise ValueError(f"expected {len(self.mlps)} feature maps and patch id sets, "
                             f"got {len(features)} and {len(patch_ids)}")
        out = []
        for mlp, feat, ids in zip(self.mlps, features, patch_ids):
            patches = feat.permute(0, 2, 3, 1).flatten(1, 2)[:, ids]  # [B, P, C]
            projected = mlp(patches).float()
            out.append(projected / (projected.norm(dim=-1, keepdim=True) + 1e-7))
        return out


def sample_patch_ids(features: Sequence[torch.Tensor], num_patches: int,
                     generator: torch.Generator) -> list[torch.Tensor]:
    """Random distinct locations per layer (the same for every image of the batch), on the features' device."""
    ids = []
    for feat in features:
        locations = feat.shape[2] * feat.shape[3]
        chosen = torch.randperm(locations, generator=generator)[: min(num_patches, locations)]
        ids.append(chosen.to(feat.device))
    return ids
