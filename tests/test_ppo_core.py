"""The PPO math against values worked out by hand (the arithmetic is in each test)."""

from __future__ import annotations

import math

import pytest
import torch

from domain_lm.train import ppo_core as pc


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_gae_hand_computed_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.6], [1.0, 0.5, 9.0]])  # 9.0 sits on padding: must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = pc.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: d2 = 1 + 0 - 0.6 = 0.4 ; A2 = 0.4
    #        d1 = 0 + 0.6 - 0.4 = 0.2 ; A1 = 0.2 + 0.5*0.4 = 0.4
    #        d0 = 0 + 0.4 - 0.5 = -0.1; A0 = -0.1 + 0.5*0.4 = 0.1 ; R = A + V = 0.6, 0.8, 1.0
    # row 1: t=2 is padding -> 0; d1 = 2 + 0 - 0.5 = 1.5 ; A1 = 1.5
    #        d0 = 0 + 0.5 - 1.0 = -0.5 ; A0 = -0.5 + 0.5*1.5 = 0.25 ; R = 1.25, 2.0, 0
    assert close(adv, [[0.1, 0.4, 0.4], [0.25, 1.5, 0.0]])
    assert close(ret, [[0.6, 0.8, 1.0], [1.25, 2.0, 0.0]])


def test_gae_discount():
    adv, _ = pc.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.4, 0.6]]), torch.ones(1, 3), gamma=0.5, lam=1.0)
    # d2 = 1 - 0.6 = 0.4 ; A2 = 0.4
    # d1 = 0 + 0.5*0.6 - 0.4 = -0.1 ; A1 = -0.1 + 0.5*1*0.4 = 0.1
    # d0 = 0 + 0.5*0.4 - 0.5 = -0.3 ; A0 = -0.3 + 0.5*0.1 = -0.25
    assert close(adv, [[-0.25, 0.1, 0.4]])


def test_clipped_policy_loss():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    loss, m = pc.policy_loss(logp, old, adv, torch.ones(1, 3), clip_range=0.2)
    # t0: max(-1*1.5, -1*1.2) = -1.2 (clipped) ; t1: max(-0.5, -1*0.8) = -0.5 ; t2: max(2.2, 2.2) = 2.2
    # loss = (-1.2 - 0.5 + 2.2) / 3 = 0.1666667 ; clip fraction 1/3
    assert loss.item() == pytest.approx(0.5 / 3, abs=1e-6)
    assert m["policy_clipfrac"] == pytest.approx(1 / 3)
    unclipped, _ = pc.policy_loss(logp, old, adv, torch.ones(1, 3), use_clip=False)
    # (-1.5 - 0.5 + 2.2) / 3 = 0.0666667
    assert unclipped.item() == pytest.approx(0.2 / 3, abs=1e-6)


def test_policy_loss_ignores_padding_and_has_gradient():
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = pc.policy_loss(logp, torch.zeros(1, 2), torch.tensor([[2.0, 100.0]]), torch.tensor([[1.0, 0.0]]))
    loss.backward()
    # d/dlogp of -A*exp(logp) at logp=0 is -A = -2 on the real token; padding gets 0
    assert close(logp.grad, [[-2.0, 0.0]])


def test_clipped_value_loss():
    values, old, ret = torch.tensor([[0.5, -0.1]]), torch.zeros(1, 2), torch.ones(1, 2)
    loss, m = pc.value_loss(values, old, ret, torch.ones(1, 2), clip_range=0.2)
    # t0: (0.5-1)^2 = 0.25 ; clipped V = 0.2 -> (0.2-1)^2 = 0.64 ; max 0.64
    # t1: (-0.1-1)^2 = 1.21 ; inside the clip range -> 1.21
    # loss = 0.5 * (0.64 + 1.21) / 2 = 0.4625 ; clip fraction 1/2 ; value error (0.25+1.21)/2 = 0.73
    assert loss.item() == pytest.approx(0.4625)
    assert m["value_clipfrac"] == pytest.approx(0.5)
    assert m["value_error"] == pytest.approx(0.73)
    plain, _ = pc.value_loss(values, old, ret, torch.ones(1, 2), use_clip=False)
    assert plain.item() == pytest.approx(0.5 * (0.25 + 1.21) / 2)  # 0.365


def test_kl_estimators():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    # r = log(0.25/0.5) = -ln 2 = -0.693147
    assert pc.kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2), rel=1e-5)  # -r
    assert pc.kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2, rel=1e-5)  # 0.240227
    assert pc.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2), rel=1e-5)  # e^r - 1 - r = 0.193147
    with pytest.raises(ValueError):
        pc.kl_estimate(logp, ref, "k9")


def test_token_rewards_fold_kl_and_score_on_last_token():
    logp = torch.tensor([[-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards, m = pc.token_rewards(torch.tensor([2.0]), logp, ref, mask, kl_coef=0.1)
    # k1 per token = logp - ref = 0.5, 0, (-0.5 on padding -> 0) ; penalty -0.1*KL = -0.05, 0
    # score 2.0 lands on the last real token (t=1)
    assert close(rewards, [[-0.05, 2.0, 0.0]])
    assert m["kl"] == pytest.approx(0.5)


def test_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 2, unbiased variance ((1)+(0)+(1))/2 = 1 -> (x-2)/1 ; padding stays 0
    assert close(pc.masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]], tol=1e-4)


def test_entropy_and_logprobs():
    logits = torch.zeros(1, 1, 4)
    assert pc.entropy_from_logits(logits).item() == pytest.approx(math.log(4))
    assert pc.logprobs_from_logits(logits, torch.tensor([[2]])).item() == pytest.approx(math.log(0.25))


def test_running_moments():
    rm = pc.RunningMoments()
    b_mean, b_std = rm.update(torch.tensor([1.0, 2.0, 3.0]))
    # batch: mean 2, sample std sqrt(((1)+(0)+(1))/2) = 1 ; running population var 2/3
    assert (b_mean, b_std) == (pytest.approx(2.0), pytest.approx(1.0))
    assert rm.mean == pytest.approx(2.0) and rm.var == pytest.approx(2 / 3)
    rm.update(torch.tensor([4.0]))
    # all of [1,2,3,4]: mean 2.5, population var (2.25+0.25+0.25+2.25)/4 = 1.25
    assert rm.mean == pytest.approx(2.5) and rm.var == pytest.approx(1.25)
    # normalise 5 -> (5-2.5)/sqrt(1.25) = 2.236 ; clipped at 2
    assert rm.normalize(torch.tensor([5.0]), clip=2.0).item() == pytest.approx(2.0)
    rm2 = pc.RunningMoments()
    rm2.load_state_dict(rm.state_dict())
    assert rm2.std == pytest.approx(math.sqrt(1.25))


def test_kl_controller():
    fixed = pc.KLController(0.1)
    assert fixed.update(5.0, 10) == 0.1
    ada = pc.KLController(0.1, adaptive=True, target=0.1, horizon=100)
    # KL 0.15: error 0.5 clipped to 0.2 -> 0.1 * (1 + 0.2*10/100) = 0.102
    assert ada.update(0.15, 10) == pytest.approx(0.102)
    # KL 0.09: error -0.1 -> 0.102 * (1 - 0.1*10/100) = 0.10098
    assert ada.update(0.09, 10) == pytest.approx(0.10098)
