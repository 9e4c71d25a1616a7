"""Face-region guided attention: visual tokens attend to tokens built from the 9 iBUG landmark regions."""

from __future__ import annotations

import math

import torch
from torch import nn

from mllm.face.regions import LEFT_EYE, REGIONS, RIGHT_EYE

REGION_INDICES = [list(r) for r in REGIONS.values()]


def region_centroids(landmarks_01: torch.Tensor) -> torch.Tensor:
    """(F, 68, 2) -> (F, 9, 2): the mean point of each region."""
    return torch.stack([landmarks_01[:, idx].mean(1) for idx in REGION_INDICES], dim=1)


class FaceRegionGuidedAttention(nn.Module):
    """One token per region (a linear layer per region over that region's own shape and its place in the face)
    plus a global token (a linear layer over where the regions sit); each frame's visual tokens attend to that
    frame's 10 landmark tokens with multi-head cross-attention, pre-norm, and a residual scaled by a learnable gate
    that starts small, so a pretrained base behaves (almost) unchanged before training.

    `distance_mask`: an additive attention bias -d^2 / (2 sigma^2), d the distance from a visual token's patch
    centre to a region's centroid in [0, 1] image coordinates: patches look mostly at the regions they cover.
    Frames without a face pass through unchanged.
    """

    def __init__(self, hidden: int, heads: int = 4, gate_init: float = 1e-2, distance_mask: bool = True, sigma=0.25):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        # Inputs per region: its points around its own centroid, then that centroid's place in the face.
        self.region_proj = nn.ModuleList(nn.Linear(2 * len(idx) + 2, hidden) for idx in REGION_INDICES)
        self.global_proj = nn.Linear(2 * len(REGION_INDICES), hidden)
        self.region_embed = nn.Parameter(torch.randn(len(REGION_INDICES) + 1, hidden) * 0.02)
        self.norm_visual = nn.LayerNorm(hidden)
        self.norm_region = nn.LayerNorm(hidden)
        self.attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.gate = nn.Parameter(torch.full((hidden,), float(gate_init)))
        self.distance_mask = distance_mask
        self.sigma = sigma

    def region_tokens(self, landmarks_01: torch.Tensor) -> torch.Tensor:
        """(F, 68, 2) in [0, 1] -> (F, 10, hidden): the 9 region tokens, then the global one.

        Each region is described by its own shape (its points around its centroid) and, separately, by where that
        centroid sits relative to the face's centre, all divided by the inter-ocular distance. So a token carries
        expression geometry at a scale of order one, not where the face is or how large: an opening mouth changes
        the inner-lips token by a good fraction of its size. (Coordinates centred on the whole face instead left
        the expression a few percent of each token, and the face pathway took several hundred steps to be used,
        on some CPUs never: tests/mllm/model/test_learning.py.)"""
        right_eye = landmarks_01[:, list(RIGHT_EYE)].mean(1)
        left_eye = landmarks_01[:, list(LEFT_EYE)].mean(1)
        interocular = (left_eye - right_eye).norm(dim=-1).clamp_min(1e-3)[:, None, None]
        centroids = region_centroids(landmarks_01)  # (F, 9, 2)
        placement = (centroids - landmarks_01.mean(1, keepdim=True)) / interocular
        tokens = [
            proj(
                torch.cat([((landmarks_01[:, idx] - centroids[:, [i]]) / interocular).flatten(1), placement[:, i]], 1)
            )
            for i, (proj, idx) in enumerate(zip(self.region_proj, REGION_INDICES, strict=True))
        ]
        tokens.append(self.global_proj(placement.flatten(1)))
        return torch.stack(tokens, dim=1) + self.region_embed

    def _distance_bias(self, landmarks_01: torch.Tensor, num_tokens: int) -> torch.Tensor | None:
        side = int(math.isqrt(num_tokens))
        if not self.distance_mask or side * side != num_tokens:
            return None  # not a square patch grid: no geometry to use
        centres = (torch.arange(side, device=landmarks_01.device, dtype=landmarks_01.dtype) + 0.5) / side
        grid = torch.stack(torch.meshgrid(centres, centres, indexing="ij"), dim=-1).reshape(-1, 2).flip(-1)  # (T, xy)
        centroids = region_centroids(landmarks_01)  # (F, 9, 2)
        d2 = ((grid[None, :, None, :] - centroids[:, None, :, :]) ** 2).sum(-1)  # (F, T, 9)
        bias = -d2 / (2 * self.sigma**2)
        bias = torch.cat([bias, torch.zeros_like(bias[..., :1])], dim=-1)  # the global token is everywhere
        return bias.repeat_interleave(self.heads, dim=0)  # (F * heads, T, 10)

    def forward(self, visual: torch.Tensor, landmarks_01: torch.Tensor, has_face: torch.Tensor) -> torch.Tensor:
        """visual (F, T, hidden); landmarks_01 (F, 68, 2), any values where `has_face` (F,) is False."""
        if visual.shape[0] == 0 or not bool(has_face.any()):
            return visual
        landmarks_01 = torch.nan_to_num(landmarks_01.to(visual.dtype), nan=0.5)
        regions = self.norm_region(self.region_tokens(landmarks_01))
        bias = self._distance_bias(landmarks_01, visual.shape[1])
        attended, _ = self.attention(self.norm_visual(visual), regions, regions, attn_mask=bias, need_weights=False)
        # The residual is measured in units of each visual token's own scale (its RMS): the gate is the share of
        # the token the geometry may change, whatever scale the vision projector works at.
        scale = visual.pow(2).mean(-1, keepdim=True).sqrt()
        out = visual + self.gate * attended * scale
        return torch.where(has_face.view(-1, 1, 1).to(visual.device), out, visual)
