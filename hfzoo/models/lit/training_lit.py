"""Training objectives of DiT/LiT with learned sigma, and LiT's hybrid distillation.

``DiffusionLoss`` is DiT's objective (the improved-DDPM one): with x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε,
  loss = ‖ε − ε_θ(x_t, t, y)‖²  +  L_vlb(t),
where L_vlb is the KL between the true posterior q(x_{t−1} | x_t, x0) and the model's Gaussian, whose mean comes
from a *frozen* copy of ε_θ (so this term only trains the variance) and whose log-variance interpolates
log β_t and log β̃_t with the model's variance output v ∈ [−1, 1]: log Σ = ½(v+1)·log β_t + ½(1−v)·log β̃_t.
At t = 0 the term is the discretized Gaussian decoder's negative log-likelihood (data in [−1, 1], 256 levels).
Both terms are means over pixels; the KL is in bits, as in DiT.

``hybrid_distillation_loss`` is LiT's extra supervision from a DiT teacher on the same x_t:
  λ_noise·‖ε_teacher − ε_student‖² + λ_var·‖v_teacher − v_student‖²
on the noise and the variance outputs (v: the variance interpolation values, an affine function of log Σ at
each t). The paper's best weights with a DiT-XL/2 teacher: λ_noise = 0.5, λ_var = 0.05.
"""

from __future__ import annotations

import math

import torch


def dit_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DiT's linear schedule, fp64."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log p(x) of data in [−1, 1] quantized to 256 levels under N(mean, exp(log_scale)²), per element."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), per element."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


class DiffusionLoss:
    """DiT's training loss for a model whose output is [ε, v] (learned sigma) or ε alone."""

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        betas = dit_betas(num_timesteps, beta_start, beta_end)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        self.num_timesteps = num_timesteps
        self.sqrt_ac = ac.sqrt()
        self.sqrt_1m_ac = (1 - ac).sqrt()
        post_var = betas * (1 - ac_prev) / (1 - ac)
        self.post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))     # clipped at t = 0
        self.log_betas = torch.log(betas)
        self.post_c1 = betas * ac_prev.sqrt() / (1 - ac)
        self.post_c2 = (1 - ac_prev) * alphas.sqrt() / (1 - ac)

    def _at(self, table, t, x):
        return table.to(x.device)[t].to(torch.float32).reshape(-1, *([1] * (x.dim() - 1)))

    def add_noise(self, x0, t, noise):
        return self._at(self.sqrt_ac, t, x0) * x0 + self._at(self.sqrt_1m_ac, t, x0) * noise

    def model_log_variance(self, v, t):
        """log Σ from the variance values v ∈ [−1, 1]."""
        frac = (v + 1) / 2
        return frac * self._at(self.log_betas, t, v) + (1 - frac) * self._at(self.post_log_var, t, v)

    def vlb_terms(self, x0, x_t, t, eps, v):
        """L_vlb per sample (bits per pixel), from the frozen noise prediction and the variance values."""
        true_mean = self._at(self.post_c1, t, x0) * x0 + self._at(self.post_c2, t, x0) * x_t
        true_log_var = self._at(self.post_log_var, t, x0)
        pred_x0 = (x_t - self._at(self.sqrt_1m_ac, t, x_t) * eps.detach()) / self._at(self.sqrt_ac, t, x_t)
        mean = self._at(self.post_c1, t, x0) * pred_x0 + self._at(self.post_c2, t, x0) * x_t
        log_var = self.model_log_variance(v, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def __call__(self, model, x0, class_labels=None, t=None, noise=None, generator=None) -> dict:
        """Sample t and ε (unless given), run the model, return {"loss", "mse", "vb", "x_t", "t", "noise", "output"}."""
        B, C = x0.shape[:2]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (B,), generator=generator).to(x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator).to(x0)
        x_t = self.add_noise(x0, t, noise)
        out = model(x_t, t, class_labels).sample
        eps = out[:, :C]
        mse = (eps.float() - noise.float()).pow(2).flatten(1).mean(1)
        if out.shape[1] == 2 * C:
            vb = self.vlb_terms(x0.float(), x_t.float(), t, eps.float(), out[:, C:].float())
        else:
            vb = torch.zeros_like(mse)
        return {"loss": (mse + vb).mean(), "mse": mse.mean(), "vb": vb.mean(), "x_t": x_t, "t": t, "noise": noise,
                "output": out}


def hybrid_distillation_loss(student_output: torch.Tensor, teacher_output: torch.Tensor, in_channels: int,
                             lambda_noise: float = 0.5, lambda_var: float = 0.05) -> torch.Tensor:
    """λ_noise·‖ε_T − ε_S‖² + λ_var·‖v_T − v_S‖² (means over pixels and batch); teacher outputs are not trained.

    Both outputs are ``[B, 2C, H, W]`` (noise then variance values) from the same noisy input, timestep and
    class; with ``C``-channel outputs (no learned sigma) only the noise term applies.
    """
    if student_output.shape != teacher_output.shape:
        raise ValueError(f"student and teacher outputs differ in shape: {tuple(student_output.shape)} vs "
                         f"{tuple(teacher_output.shape)}")
    C = in_channels
    teacher_output = teacher_output.detach().float()
    s = student_output.float()
    loss = lambda_noise * (s[:, :C] - teacher_output[:, :C]).pow(2).mean()
    if s.shape[1] == 2 * C and lambda_var:
        loss = loss + lambda_var * (s[:, C:] - teacher_output[:, C:]).pow(2).mean()
    return loss


__all__ = ["DiffusionLoss", "dit_betas", "discretized_gaussian_log_likelihood", "hybrid_distillation_loss",
           "normal_kl"]
