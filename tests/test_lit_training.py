"""DiT's learned-sigma diffusion loss and LiT's hybrid distillation loss."""

import math

import pytest
import torch

from hfzoo.models.lit.training_lit import DiffusionLoss, hybrid_distillation_loss, normal_kl


class Exact(torch.nn.Module):
    """Outputs the true noise and v = -1 (log Σ = the true posterior's log-variance)."""

    def __init__(self, noise):
        super().__init__()
        self.noise = noise

    def forward(self, x_t, t, y=None):
        return type("O", (), {"sample": torch.cat([self.noise, -torch.ones_like(self.noise)], 1)})()


def test_exact_model_has_zero_loss_for_t_above_zero():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, 6, 6, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([1, 10, 500, 999])
    out = DiffusionLoss()(Exact(noise), x0, t=t, noise=noise)
    assert out["mse"].item() < 1e-10 and abs(out["vb"].item()) < 1e-6


def test_vlb_trains_only_the_variance_and_t0_is_the_decoder_nll():
    loss = DiffusionLoss()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(3, 1, 4, 4, generator=g, requires_grad=True)
    v = torch.zeros(3, 1, 4, 4, requires_grad=True)
    t = torch.tensor([0, 5, 900])
    x_t = loss.add_noise(x0, t, torch.randn(x0.shape, generator=g))
    vb = loss.vlb_terms(x0, x_t, t, eps, v)
    ge, gv = torch.autograd.grad(vb.sum(), (eps, v), allow_unused=True)
    assert ge is None or ge.abs().max() == 0
    assert gv.abs().max() > 0
    assert vb[0] > 0                                     # a negative log-likelihood in bits


def test_normal_kl_matches_closed_form():
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.2), torch.tensor(0.5)
    s1, s2 = math.exp(-0.5), math.exp(0.25)
    expected = math.log(s2 / s1) + (s1 ** 2 + 0.5 ** 2) / (2 * s2 ** 2) - 0.5
    assert abs(normal_kl(m1, lv1, m2, lv2).item() - expected) < 1e-6


def test_hybrid_distillation_loss():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 6, 4, 4, generator=g, requires_grad=True)
    t = torch.randn(2, 6, 4, 4, generator=g, requires_grad=True)
    loss = hybrid_distillation_loss(s, t, in_channels=3, lambda_noise=0.5, lambda_var=0.05)
    expected = 0.5 * (s[:, :3] - t[:, :3]).pow(2).mean() + 0.05 * (s[:, 3:] - t[:, 3:]).pow(2).mean()
    assert abs(loss.item() - expected.item()) < 1e-6
    loss.backward()
    assert t.grad is None and s.grad.abs().max() > 0      # the teacher is not trained
    assert hybrid_distillation_loss(t.detach(), t, 3).item() == 0
    with pytest.raises(ValueError, match="shape"):
        hybrid_distillation_loss(s, t[:, :3], 3)
