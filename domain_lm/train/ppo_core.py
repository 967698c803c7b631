"""PPO math as small pure tensor functions (no models, no optimisers, no logging).

Shapes: ``B`` = sequences in a batch, ``T`` = response tokens (prompt positions are not here),
``V`` = vocabulary. ``mask`` is 1.0 on real response tokens and 0.0 on padding after EOS.
Loss functions return ``(loss, metrics)``; ``metrics`` holds detached Python floats for the
caller to log. References are to Zheng et al. 2023, "Secrets of RLHF in Large Language Models
Part I: PPO" (arXiv:2307.04964), written "PPO-Max §x" (section numbers of the arXiv v2 text:
§3.2 PPO/GAE, §5.2 monitoring metrics, §5.3.1 score reparameterisation, §5.3.2 policy constraints,
§5.3.3 pretrained initialisation, §5.4 the PPO-Max recipe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

KLKind = Literal["k1", "k2", "k3"]


# --------------------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(B, T) -> (B, T): ``(x - mean) / std`` over the masked entries; padding stays 0.

    PPO-Max §5.3.1 (score reparameterisation: advantage normalisation): whitening the advantages of a batch keeps the
    policy-gradient scale stable across batches whose rewards differ in scale.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# --------------------------------------------------------------------------- KL to the reference


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """(B, T), (B, T) -> (B, T): per-token estimate of KL(pi || ref) from sampled tokens.

    With ``r = ref_logp - logp`` (log ratio ref/pi at tokens sampled from pi), after J. Schulman,
    "Approximating KL divergence" (2020):
      k1 = -r                    unbiased, high variance, can be negative per token
      k2 = r**2 / 2              biased, low variance, always >= 0
      k3 = exp(r) - 1 - r        unbiased, low variance, always >= 0
    """
    r = ref_logp - logp
    if kind == "k1":
        return -r
    if kind == "k2":
        return 0.5 * r * r
    if kind == "k3":
        return torch.expm1(r) - r
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


def token_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: KLKind = "k1",
) -> tuple[torch.Tensor, dict[str, float]]:
    """(B,), (B, T), (B, T), (B, T) -> rewards (B, T).

    PPO-Max §5.3.2 (policy constraints: token-level KL penalty): every response token is charged ``-kl_coef * KL_t``
    and the sequence score from the reward model is added on the last real token, so the
    critic sees where the score arrives and the policy pays for drifting at each token.
    """
    kl = kl_estimate(logp, ref_logp, kind) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    rewards = rewards.clone()
    rewards[torch.arange(rewards.size(0)), last] += scores
    seq_kl = kl.sum(dim=1)  # (B,)
    return rewards * mask, {"kl": seq_kl.mean().item(), "kl_penalty": (-kl_coef * seq_kl).mean().item()}


# --------------------------------------------------------------------------- advantages


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) x3 -> advantages (B, T), returns (B, T).

    Generalised Advantage Estimation (Schulman et al. 2016; PPO-Max §3.2):
      delta_t = r_t + gamma * V_{t+1} - V_t        (V after the last real token is 0)
      A_t     = delta_t + gamma * lam * A_{t+1}
      R_t     = A_t + V_t                          (the critic's regression target)
    Padding positions contribute nothing and get advantage 0.
    """
    B, T = rewards.shape
    values = values * mask
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        # At padding keep carrying the value/advantage from later real tokens (there are none
        # after EOS, so this carries zeros) without letting padding reset a real token's tail.
        next_adv = torch.where(m > 0, a, next_adv)
        next_value = torch.where(m > 0, values[:, t], next_value)
    returns = (adv + values) * mask
    return adv, returns


# --------------------------------------------------------------------------- losses


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float = 0.2, use_clip: bool = True
) -> tuple[torch.Tensor, dict[str, float]]:
    """(B, T) x4 -> scalar loss.

    Clipped surrogate (Schulman et al. 2017; PPO-Max §3.2):
      ratio = exp(logp - old_logp)
      loss  = mean_t max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))
    ``use_clip=False`` gives the unclipped policy gradient (for ablations).
    """
    log_ratio = (logp - old_logp) * mask
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    if use_clip:
        pg2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
        pg = torch.max(pg1, pg2)
        clipfrac = masked_mean((pg2 > pg1).float(), mask).item()
    else:
        pg, clipfrac = pg1, 0.0
    loss = masked_mean(pg, mask)
    approx_kl = masked_mean(0.5 * log_ratio**2, mask).item()
    ratio_mean = masked_mean(ratio, mask).item()
    metrics = {"policy_loss": loss.item(), "policy_clipfrac": clipfrac, "approx_kl": approx_kl, "ratio_mean": ratio_mean}
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    use_clip: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(B, T) x4 -> scalar loss.

    PPO-Max §5.4 (the PPO-Max recipe: value function loss clipping):
      V_clip = old_V + clip(V - old_V, -eps, eps)
      loss   = 0.5 * mean_t max((V - R)^2, (V_clip - R)^2)
    Without clipping: ``0.5 * mean_t (V - R)^2``.
    """
    err = (values - returns) ** 2
    if use_clip:
        v_clip = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        err_clip = (v_clip - returns) ** 2
        loss = 0.5 * masked_mean(torch.max(err, err_clip), mask)
        clipfrac = masked_mean((err_clip > err).float(), mask).item()
    else:
        loss, clipfrac = 0.5 * masked_mean(err, mask), 0.0
    return loss, {"value_loss": loss.item(), "value_clipfrac": clipfrac, "value_error": masked_mean(err, mask).item()}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B, T): entropy of the categorical distribution at each position."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(B, T, V), (B, T) -> (B, T): log-probability of each chosen token."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------- running statistics


@dataclass
class RunningMoments:
    """Mean and std of every value seen so far, merged batch by batch (Chan et al. parallel form).

    PPO-Max §5.3.1 (score reparameterisation: reward normalisation and clipping): scores are standardised with the running
    statistics so the reward scale does not drift as the policy improves.
    """

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-24

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Merge the values in ``x`` (any shape); return the batch's own (mean, std)."""
        x = x.detach().double().flatten()
        n = x.numel()
        b_mean = x.mean().item()
        b_var = x.var(unbiased=False).item() if n > 1 else 0.0
        delta = b_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total
        return b_mean, math.sqrt(b_var * n / (n - 1)) if n > 1 else 0.0

    def normalize(self, x: torch.Tensor, clip: float | None = None, eps: float = 1e-8) -> torch.Tensor:
        out = (x - self.mean) / (self.std + eps)
        return out.clamp(-clip, clip) if clip else out

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(d["mean"]), float(d["var"]), float(d["count"])


@dataclass
class KLController:
    """The KL penalty coefficient: fixed, or adaptive towards a target KL.

    Adaptive rule of Ziegler et al. 2019 (also PPO-Max §5.3.2):
      e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon)
    """

    value: float
    adaptive: bool = False
    target: float = 0.1
    horizon: int = 10000

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.adaptive:
            err = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + err * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.value = float(d["value"])
