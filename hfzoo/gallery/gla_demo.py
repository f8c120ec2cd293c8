"""Gallery tab: continue a prompt with the tiny GLA trained on the Python language reference, streamed token by token.

The model keeps a fixed-size recurrent state per layer, so each new token costs the same however long the text
already is. The logic is in plain functions (``load``, ``stream_continuation``, ``continue_text``) that tests call
directly; ``build_tab`` only lays out components.
"""

from __future__ import annotations

import functools
import threading

import torch

from ..registry import checkpoint_path
from .text_generation import MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, generation_kwargs, prompt_ids

CHECKPOINT = checkpoint_path("tiny-gla")
EXAMPLES = ["The for statement is used to", "A class definition defines", "Exceptions are raised when"]


@functools.lru_cache(maxsize=1)
def load():
    """The tokenizer and model of the shipped checkpoint (loaded on first use)."""
    from transformers import PreTrainedTokenizerFast

    from ..models.gla.modeling_gla import GLAForCausalLM

    if not (CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(f"the tiny GLA checkpoint is missing at {CHECKPOINT} "
                                "(train it with scripts/train_tiny_gla.py)")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(CHECKPOINT)
    model = GLAForCausalLM.from_pretrained(CHECKPOINT).eval()
    return tokenizer, model


def stream_continuation(prompt: str, temperature: float = 0.8, top_p: float = 0.9, max_new_tokens: int = 64,
                        seed: int | None = None):
    """Yield the prompt followed by a growing continuation (one yield per decoded piece)."""
    from transformers import TextIteratorStreamer

    tokenizer, model = load()
    ids = prompt_ids(tokenizer, prompt)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  **generation_kwargs(temperature, top_p, max_new_tokens))
    errors = []

    def run():
        try:
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():  # the ops pick the PyTorch path on a CPU, the kernels on a GPU
                model.generate(**kwargs)
        except Exception as e:  # surfaced in the caller's thread below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    shown = tokenizer.decode(ids[0, 1:], skip_special_tokens=True)
    text = shown
    for piece in streamer:
        text += piece
        yield text
    thread.join()
    if errors:
        raise errors[0]
    if text == shown:
        yield text


def continue_text(prompt: str, temperature: float = 0.0, top_p: float = 0.9, max_new_tokens: int = 32,
                  seed: int | None = 0) -> str:
    """The final text of :func:`stream_continuation` (greedy by default)."""
    pieces = list(stream_continuation(prompt, temperature, top_p, max_new_tokens, seed))
    return pieces[-1] if pieces else prompt


def build_tab():
    import gradio as gr

    from .user_input import MAX_PROMPT_CHARS, as_gradio_errors, check_text

    gr.Markdown("**Gated Linear Attention** — a ~0.8M-parameter GLA trained for a few minutes on a laptop CPU on "
                "the Python language reference (`pydoc_data.topics`). It writes reference-flavoured English, not "
                "facts. Each token costs the same however long the text is: the model keeps a fixed-size state "
                "instead of a growing key/value cache.")
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=3, max_length=MAX_PROMPT_CHARS,
                                info=f"Only the last {MAX_PROMPT_TOKENS} tokens are used.")
            temperature = gr.Slider(0.0, 1.5, value=0.8, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
            max_new = gr.Slider(1, MAX_NEW_TOKENS, value=64, step=1, label="New tokens")
            button = gr.Button("Continue", variant="primary")
        output = gr.Textbox(label="Text", lines=10)
    gr.Examples(EXAMPLES, inputs=prompt)

    @as_gradio_errors
    def on_click(p, t, tp, n):
        yield from stream_continuation(check_text(p, "prompt"), t, tp, int(n))

    button.click(on_click, inputs=[prompt, temperature, top_p, max_new], outputs=output, api_name="gla_generate")
