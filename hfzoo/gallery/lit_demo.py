"""Gallery tab: pick digits, guidance, steps and a seed; the tiny LiT samples them through a diffusers scheduler.

The checkpoint is the LiT inherited from and distilled by a tiny DiT on scikit-learn's 8x8 digits
(``scripts/train_tiny_lit.py``). ``sample_grid`` does the work and is what tests call; ``build_tab`` only lays
out components.
"""

from __future__ import annotations

import functools

import numpy as np

from ..registry import checkpoint_path

CHECKPOINT = checkpoint_path("tiny-lit")
SCHEDULERS = ("ddim", "dpm-solver", "ddpm")
MAX_IMAGES = 40


@functools.lru_cache(maxsize=1)
def load():
    """The shipped tiny LiT (loaded on first use)."""
    from ..models.lit.modeling_lit import LiTModel

    if not (CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(f"the tiny LiT checkpoint is missing at {CHECKPOINT} "
                                "(train it with scripts/train_tiny_lit.py)")
    return LiTModel.from_pretrained(CHECKPOINT).eval()


def sample_grid(digits, per_digit: int = 4, guidance_scale: float = 2.0, steps: int = 50, seed: int = 0,
                scheduler: str = "ddim", scale: int = 8):
    """Sample ``per_digit`` images of each requested digit; returns (uint8 grid [rows*8*scale, cols*8*scale],
    the 8x8 float samples [n, 8, 8] in [0, 1]). One row per digit."""
    from ..models.lit.pipeline_lit import LiTPipeline

    digits = [int(d) for d in digits]
    if not digits:
        raise ValueError("pick at least one digit")
    if any(d < 0 or d > 9 for d in digits):
        raise ValueError(f"digits must be 0-9, got {digits}")
    per_digit = int(per_digit)
    if per_digit < 1 or len(digits) * per_digit > MAX_IMAGES:
        raise ValueError(f"between 1 and {MAX_IMAGES} images in all (digits x images per digit)")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}")
    labels = [d for d in digits for _ in range(per_digit)]
    pipe = LiTPipeline(load(), scheduler=scheduler)
    images = pipe(labels, num_inference_steps=int(steps), guidance_scale=float(guidance_scale), seed=int(seed),
                  progress=False)[:, 0].numpy()
    grid = images.reshape(len(digits), per_digit, 8, 8).transpose(0, 2, 1, 3).reshape(len(digits) * 8, per_digit * 8)
    grid = np.kron(grid, np.ones((scale, scale)))
    return (grid * 255).round().astype(np.uint8), images


def build_tab():
    import gradio as gr

    from .user_input import as_gradio_errors

    gr.Markdown("**LiT** — a diffusion transformer with linear attention (ReLU features + a 5×5 depthwise conv "
                "on V), ~330K parameters, inherited from a tiny DiT and distilled by it on scikit-learn's 8×8 "
                "digits. Pick digits; it samples them with classifier-free guidance through a diffusers "
                "scheduler.")
    with gr.Row():
        with gr.Column():
            digits = gr.CheckboxGroup(choices=[str(i) for i in range(10)], value=["0", "3", "7"], label="Digits")
            per_digit = gr.Slider(1, 8, value=4, step=1, label="Images per digit")
            guidance = gr.Slider(1.0, 6.0, value=2.0, step=0.5, label="Guidance scale (1 = none)")
            steps = gr.Slider(5, 100, value=50, step=5, label="Sampling steps")
            scheduler = gr.Dropdown(list(SCHEDULERS), value="ddim", label="Scheduler")
            seed = gr.Number(value=0, precision=0, label="Seed")
            button = gr.Button("Sample", variant="primary")
        with gr.Column():
            out = gr.Image(label="Samples (one row per digit)", type="numpy", interactive=False)

    def run(digits, per_digit, guidance, steps, scheduler, seed):
        return sample_grid([int(d) for d in digits], per_digit, guidance, steps, int(seed or 0), scheduler)[0]

    button.click(as_gradio_errors(run), inputs=[digits, per_digit, guidance, steps, scheduler, seed], outputs=out,
                 api_name="lit_sample")
