"""The audio branch: Wav2Vec2 hidden states, mixed across layers, pooled in time, projected to the LM width."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

PROJECTORS = {
    "linear": lambda d_in, d_out: nn.Linear(d_in, d_out),
    "mlp2x_gelu": lambda d_in, d_out: nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out)),
}


def build_projector(kind: str, d_in: int, d_out: int) -> nn.Module:
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projector type {kind!r}; valid: {sorted(PROJECTORS)}")
    return PROJECTORS[kind](d_in, d_out)


def audio_token_count(num_samples: int, tokens_per_second: float, max_tokens: int, sample_rate: int = 16_000) -> int:
    """Tokens a clip of `num_samples` gets: `tokens_per_second` of audio, at least 1, at most `max_tokens`."""
    if num_samples <= 0:
        return 0
    return max(1, min(max_tokens, math.ceil(num_samples / sample_rate * tokens_per_second - 1e-9)))


class AudioBranch(nn.Module):
    def __init__(self, encoder: nn.Module, lm_hidden: int, projector: str = "mlp2x_gelu"):
        super().__init__()
        self.encoder = encoder
        # Every layer must report its hidden state for the layer weights to line up: no LayerDrop. SpecAugment
        # masking is off too: the encoder is frozen, and its masks would only add noise to the projector's input.
        encoder.config.layerdrop = 0.0
        encoder.config.mask_time_prob = 0.0
        encoder.config.mask_feature_prob = 0.0
        layers = encoder.config.num_hidden_layers + 1  # the feature projection output plus every layer
        self.layer_weights = nn.Parameter(torch.zeros(layers))
        self.projector = build_projector(projector, encoder.config.hidden_size, lm_hidden)

    def forward(self, input_values: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """One clip: input_values (samples,) normalised -> (num_tokens, lm_hidden)."""
        hidden = self.encoder(input_values.unsqueeze(0), output_hidden_states=True).hidden_states
        weights = torch.softmax(self.layer_weights, dim=0)
        mixed = torch.einsum("l,lbth->bth", weights.to(hidden[0].dtype), torch.stack(hidden))  # (1, T, H)
        pooled = F.adaptive_avg_pool1d(mixed.transpose(1, 2), num_tokens).transpose(1, 2)[0]  # (num_tokens, H)
        return self.projector(pooled)
