"""LiT sampling through diffusers' schedulers: an oracle denoiser for a one-point data distribution must
land on that point with every scheduler; seeds; guidance; learned sigma; PIL output; bad arguments."""

import pytest
import torch
from helpers import rel_err
from transformers import PretrainedConfig

from hfzoo.models.lit import ARCHITECTURE, LiTModel
from hfzoo.models.lit.pipeline_lit import LiTPipeline, make_scheduler


class OracleDenoiser(torch.nn.Module):
    """The exact noise prediction when all data is the one image `target`: eps = (x_t - √ᾱ_t·x0) / √(1-ᾱ_t)."""

    def __init__(self, target, learn_sigma=False):
        super().__init__()
        self.register_buffer("target", target)
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.config = PretrainedConfig()
        self.config.in_channels, self.config.sample_size = target.shape[0], target.shape[-1]
        self.config.num_classes, self.config.learn_sigma = 10, learn_sigma
        self.alphas_cumprod = make_scheduler("ddpm").alphas_cumprod

    def forward(self, sample, timestep, class_labels=None):
        a = self.alphas_cumprod[timestep.cpu()].to(sample)[:, None, None, None]
        eps = (sample - a.sqrt() * self.target) / (1 - a).sqrt()
        if self.config.learn_sigma:
            eps = torch.cat([eps, torch.zeros_like(eps)], dim=1)      # variance values: midway (learned_range 0)
        return type("Out", (), {"sample": eps})()

    def forward_with_cfg(self, sample, timestep, class_labels, guidance_scale):
        return self(sample, timestep, class_labels).sample


@pytest.mark.parametrize("scheduler,steps", [("ddpm", 1000), ("ddim", 50), ("dpm-solver", 20)])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_oracle_denoiser_reaches_the_data_point(scheduler, steps, learn_sigma):
    target = torch.linspace(-0.8, 0.8, 2 * 6 * 6).reshape(2, 6, 6)
    pipe = LiTPipeline(OracleDenoiser(target, learn_sigma), scheduler=scheduler)
    images = pipe([1, 2, 3], num_inference_steps=steps, seed=0, progress=False)
    assert images.shape == (3, 2, 6, 6)
    expected = ((target + 1) / 2).expand(3, -1, -1, -1)
    assert (images - expected).abs().max() < 2e-2, (images - expected).abs().max()


def _tiny_model():
    cfg = ARCHITECTURE.tiny_config()
    model = LiTModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_seed_guidance_and_pil_output():
    model = _tiny_model()
    pipe = LiTPipeline(model, scheduler="ddim")
    a = pipe([1, 4], num_inference_steps=4, guidance_scale=3.0, seed=7, progress=False)
    b = pipe([1, 4], num_inference_steps=4, guidance_scale=3.0, seed=7, progress=False)
    c = pipe([1, 4], num_inference_steps=4, guidance_scale=3.0, seed=8, progress=False)
    d = pipe([1, 4], num_inference_steps=4, guidance_scale=1.0, seed=7, progress=False)
    assert torch.equal(a, b)
    assert rel_err(a, c) > 1e-2 and rel_err(a, d) > 1e-4
    assert a.min() >= 0 and a.max() <= 1
    pil = LiTPipeline(model, scheduler="ddpm").generate([0, 9], num_inference_steps=3, seed=0, progress=False)
    assert [im.size for im in pil] == [(8, 8), (8, 8)] and pil[0].mode == "L"
    assert model.training is False


def test_guidance_is_used_per_step():
    model = _tiny_model()
    calls = []
    original = model.forward_with_cfg
    model.forward_with_cfg = lambda *a: (calls.append(a[3]), original(*a))[1]
    LiTPipeline(model, scheduler="dpm-solver")([2], num_inference_steps=5, guidance_scale=2.5, progress=False)
    assert calls == [2.5] * 5


def test_bad_arguments():
    model = _tiny_model()
    with pytest.raises(ValueError, match="scheduler must be one of"):
        LiTPipeline(model, scheduler="euler-x")
    pipe = LiTPipeline(model)
    with pytest.raises(ValueError, match="class_labels"):
        pipe([10], num_inference_steps=2, progress=False)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe([1], num_inference_steps=2, guidance_scale=0.5, progress=False)
