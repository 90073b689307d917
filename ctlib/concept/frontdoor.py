"""Front-door head of METHOD.md §2.1/§2.7: position attention and channel attention (DANet) over the
last feature map, aggregated, then a variational information bottleneck and a linear classifier."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

AGGREGATIONS = ("sum", "concat")
KL_FORMS = ("code", "textbook")
ATTENTIONS = ("both", "channel", "position")


def ib_noise(sigma: torch.Tensor) -> torch.Tensor:
    """ε ~ N(0, I) of the reparameterised sample (a function of its own so tests can make it zero)."""
    return torch.randn_like(sigma)


class PositionAttention(nn.Module):
    """DANet's PAM: attention over the H·W positions; output γ·(V A^T) + x, γ starts at 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Conv2d(channels, channels // 8, 1)
        self.key = nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, D, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)               # (B, N, D/8)
        k = self.key(x).flatten(2)                                  # (B, D/8, N)
        attn = torch.softmax(q @ k, dim=-1)                         # (B, N, N), rows = output positions
        out = self.value(x).flatten(2) @ attn.transpose(1, 2)      # (B, D, N)
        return self.gamma * out.view(B, D, H, W) + x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x).mean((2, 3))`` without the attended map: the mean over output positions n of
        Σ_m V_m A[n, m] is V ā with ā = mean_n A[n, :], and V ā = W_v (X ā) + b_v as ā sums to 1. The value
        convolution runs on one vector per image instead of on every position."""
        q = self.query(x).flatten(2).transpose(1, 2)
        k = self.key(x).flatten(2)
        a = torch.softmax(q @ k, dim=-1).mean(1)                   # (B, N): ā
        xa = (x.flatten(2) @ a.unsqueeze(-1)).squeeze(-1)          # (B, D): X ā
        out = F.linear(xa, self.value.weight.flatten(1), self.value.bias)
        return self.gamma * out + x.mean((2, 3))


class ChannelAttention(nn.Module):
    """DANet's CAM: attention over channels with softmax(max_row(E) − E), E = X Xᵀ; γ starts at 0.

    softmax(max_row(E) − E) = softmax(−X Xᵀ): the row max only shifts the softmax's input. So CAM is
    attention with the channels as tokens, queries −X, keys and values X, and ``fused=True`` (default)
    computes it with ``scaled_dot_product_attention`` without materialising the D × D matrices;
    ``fused=False`` computes them as the reference does."""

    def __init__(self, fused: bool = True):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, D, H, W = x.shape
        X = x.flatten(2)                                            # (B, D, N)
        if self.fused:
            out = F.scaled_dot_product_attention(-X[:, None], X[:, None], X[:, None], scale=1.0)[:, 0]
        else:
            energy = X @ X.transpose(1, 2)                          # (B, D, D)
            attn = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
            out = attn @ X
        return self.gamma * out.view(B, D, H, W) + x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x).mean((2, 3))``, the map first: no shortcut here is faster, as flash attention wants
        values as wide as its keys (values x̄ of width 1 fall back to a slower path)."""
        return self(x).mean((2, 3))


class FrontDoorHead(nn.Module):
    """Attention (PAM + CAM, summed as in the code or concatenated as in the paper's caption) → global
    average pool → Linear(·, 2·ib_dim) giving μ and s, σ = softplus(s − 5) → ẑ = μ + σ·ε → Linear → logits.

    At evaluation ẑ = μ (``eval_sample=False``, default) or a sample as the reference does.
    ``pooled_position_attention`` (default True) computes the position attention's spatial mean without its
    map (the same values; ``features``); False computes the map first, as the reference does.
    Ablations: ``attention`` keeps both modules (``"both"``) or only ``"channel"`` / ``"position"``
    attention (the other is not built); ``bottleneck=False`` feeds the pooled attention features straight
    into a Linear classifier (no μ, σ, sampling or KL term: ``forward`` returns None for them).
    """

    def __init__(self, channels: int, num_classes: int, ib_dim: int = 512, aggregation: str = "sum",
                 eval_sample: bool = False, fused_channel_attention: bool = True, attention: str = "both",
                 bottleneck: bool = True, pooled_position_attention: bool = True):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}: choose one of {list(AGGREGATIONS)}")
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}: choose one of {list(ATTENTIONS)}")
        self.aggregation = aggregation
        self.eval_sample = eval_sample
        self.pooled_position_attention = pooled_position_attention
        self.ib_dim = ib_dim
        self.pam = PositionAttention(channels) if attention in ("both", "position") else None
        self.cam = ChannelAttention(fused=fused_channel_attention) if attention in ("both", "channel") else None
        width = channels * (2 if aggregation == "concat" and attention == "both" else 1)
        self.encoder = nn.Linear(width, 2 * ib_dim) if bottleneck else None
        self.decoder = nn.Linear(ib_dim if bottleneck else width, num_classes)

    def _aggregate(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if len(parts) == 1:
            return parts[0]
        return parts[0] + parts[1] if self.aggregation == "sum" else torch.cat(parts, 1)

    def attend(self, fmap: torch.Tensor) -> torch.Tensor:
        """The attended (B, D or 2D, H, W) map."""
        return self._aggregate([m(fmap) for m in (self.cam, self.pam) if m is not None])

    def features(self, fmap: torch.Tensor) -> torch.Tensor:
        """The attended map's spatial mean, all the head uses. With ``pooled_position_attention`` (default)
        each module gives its own mean (``pooled``: the position attention's without its map, the same
        values with no value convolution over every position); False: the map first, then its mean (the
        reference's order of operations)."""
        # channels-last maps (the channels_last run setting) would send the attention to slow strided paths
        fmap = fmap.contiguous()
        if not self.pooled_position_attention:
            return self.attend(fmap).mean((2, 3))
        return self._aggregate([m.pooled(fmap) for m in (self.cam, self.pam) if m is not None])

    def forward(self, fmap: torch.Tensor):
        """(logits, μ, σ); μ and σ are None without the bottleneck."""
        feats = self.features(fmap)
        if self.encoder is None:
            return self.decoder(feats), None, None
        stats = self.encoder(feats)
        mu, s = stats[:, :self.ib_dim], stats[:, self.ib_dim:]
        sigma = F.softplus(s - 5, beta=1)
        z = mu + sigma * ib_noise(sigma) if (self.training or self.eval_sample) else mu
        return self.decoder(z), mu, sigma


def ib_kl(mu: torch.Tensor, sigma: torch.Tensor, form: str = "code") -> torch.Tensor:
    """Batch mean of Σ_dims KL(N(μ, τ²) ‖ N(0, 1)) with τ = exp(σ) (the reference code) or τ = σ."""
    if form not in KL_FORMS:
        raise ValueError(f"unknown KL form {form!r}: choose one of {list(KL_FORMS)}")
    if form == "code":
        log_tau, tau2 = sigma, torch.exp(2 * sigma)
    else:
        log_tau, tau2 = torch.log(sigma), sigma ** 2
    return (0.5 * (tau2 + mu ** 2 - 1) - log_tau).sum(1).mean()
