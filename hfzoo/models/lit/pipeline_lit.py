"""Class-conditional sampling from a LiT (or DiT-variant) denoiser through diffusers' schedulers.

    pipe = LiTPipeline(model, scheduler="ddim")
    images = pipe.generate([3, 7], num_inference_steps=50, guidance_scale=4.0, seed=0)       # PIL images

The scheduler does the diffusion arithmetic (DDPM, DDIM or DPM-Solver++, DiT's linear beta schedule over 1000
training steps); this module only runs the model at each step with classifier-free guidance. With learned
sigma, DDPM uses the model's variance output (``variance_type="learned_range"``, as DiT samples); DDIM and
DPM-Solver take the noise prediction alone. In latent space pass the diffusers ``AutoencoderKL`` as ``vae``;
samples are decoded after dividing by its scaling factor. diffusers is the optional extra ``hfzoo[diffusion]``.
"""

from __future__ import annotations

import torch

from ...layers.image_inputs import to_pil_image

SCHEDULERS = ("ddpm", "ddim", "dpm-solver")
# DiT's training schedule (facebookresearch/DiT: linear betas 1e-4 .. 0.02 over 1000 steps)
DIT_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


def make_scheduler(name: str, learn_sigma: bool = True, **overrides):
    """A diffusers scheduler for DiT's training schedule: ``ddpm``, ``ddim`` or ``dpm-solver`` (DPM-Solver++ 2M)."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("LiT sampling uses diffusers' schedulers: pip install 'hfzoo[diffusion]'") from e
    cfg = {**DIT_SCHEDULE, **overrides}
    if name == "ddpm":
        return diffusers.DDPMScheduler(**cfg, variance_type="learned_range" if learn_sigma else "fixed_small",
                                       clip_sample=False)
    if name == "ddim":
        return diffusers.DDIMScheduler(**cfg, clip_sample=False, set_alpha_to_one=False)
    if name == "dpm-solver":
        return diffusers.DPMSolverMultistepScheduler(**cfg, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)} or a diffusers scheduler, got {name!r}")


class LiTPipeline:
    """Runs a class-conditional denoiser (``LiTModel``) under a diffusers scheduler, with guidance and a seed.

    Args:
        model: the denoiser; ``model(sample, timestep, class_labels).sample`` and ``model.forward_with_cfg``.
        scheduler: ``"ddpm"``, ``"ddim"``, ``"dpm-solver"``, or a diffusers scheduler instance.
        vae: optional diffusers ``AutoencoderKL`` decoding latents to images (pixel-space models: None).
    """

    def __init__(self, model, scheduler="ddim", vae=None):
        self.model = model
        cfg = model.config
        self.learn_sigma = bool(getattr(cfg, "learn_sigma", False))
        self.scheduler = make_scheduler(scheduler, self.learn_sigma) if isinstance(scheduler, str) else scheduler
        self.vae = vae

    def _uses_variance(self) -> bool:
        return self.learn_sigma and getattr(self.scheduler.config, "variance_type", None) in ("learned", "learned_range")

    @torch.no_grad()
    def __call__(self, class_labels, num_inference_steps: int = 50, guidance_scale: float = 1.0, seed: int | None = 0,
                 progress: bool = True) -> torch.Tensor:
        """Samples as a ``[B, C, H, W]`` float tensor in [0, 1] (decoded by the VAE if one is given)."""
        cfg = self.model.config
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 = no guidance), got {guidance_scale}")
        param = next(self.model.parameters())
        device, dtype = param.device, param.dtype
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
        if cfg.num_classes and (labels.min() < 0 or labels.max() >= cfg.num_classes):
            raise ValueError(f"class_labels must be in [0, {cfg.num_classes}), got {labels.tolist()}")
        B, C, S = labels.numel(), cfg.in_channels, cfg.sample_size
        generator = torch.Generator(device="cpu")
        if seed is not None:
            generator.manual_seed(seed)
        x = torch.randn(B, C, S, S, generator=generator).to(device, dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        x = x * self.scheduler.init_noise_sigma
        steps = self.scheduler.timesteps
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="LiT sampling")
        was_training = self.model.training
        self.model.eval()
        try:
            for t in steps:
                inp = self.scheduler.scale_model_input(x, t)
                tb = torch.full((B,), int(t), device=device, dtype=torch.long)
                if guidance_scale > 1.0 and cfg.num_classes:
                    out = self.model.forward_with_cfg(inp, tb, labels, guidance_scale)
                else:
                    out = self.model(inp, tb, labels if cfg.num_classes else None).sample
                if not self._uses_variance():
                    out = out[:, :C]
                step = self.scheduler.step(out.float(), t, x.float(), generator=generator)
                x = step.prev_sample.to(dtype)
        finally:
            self.model.train(was_training)
        if self.vae is not None:
            x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        return ((x.float().clamp(-1, 1) + 1) / 2).cpu()

    def generate(self, class_labels, num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 seed: int | None = 0, progress: bool = True):
        """Samples as PIL images (one per label)."""
        images = self(class_labels, num_inference_steps, guidance_scale, seed, progress)
        return [to_pil_image(img) for img in images]


__all__ = ["DIT_SCHEDULE", "LiTPipeline", "SCHEDULERS", "make_scheduler"]
