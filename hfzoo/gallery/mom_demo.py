"""Gallery tab: the tiny Mixture-of-Memories model trained on the Python language reference -- continue a prompt,
and see which memories the router sent each token to.

The logic is in plain functions (``load``, ``continue_text``, ``routes``) that tests call directly; ``build_tab``
only lays out components.
"""

from __future__ import annotations

import functools

import torch

from ..registry import checkpoint_path
from .text_generation import MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, generation_kwargs, prompt_ids

CHECKPOINT = checkpoint_path("tiny-mom")
EXAMPLES = ["The for statement is used to", "A class definition defines", "Exceptions are raised when"]


@functools.lru_cache(maxsize=1)
def load():
    """The tokenizer and model of the shipped checkpoint (loaded on first use)."""
    from transformers import PreTrainedTokenizerFast

    from ..models.mom.modeling_mom import MoMForCausalLM

    tokenizer = PreTrainedTokenizerFast.from_pretrained(CHECKPOINT)
    model = MoMForCausalLM.from_pretrained(CHECKPOINT).eval()
    return tokenizer, model


def continue_text(prompt: str, temperature: float = 0.0, top_p: float = 0.9, max_new_tokens: int = 32,
                  seed: int | None = 0) -> str:
    """The prompt (its last ``MAX_PROMPT_TOKENS`` tokens) followed by the model's continuation."""
    tokenizer, model = load()
    ids = prompt_ids(tokenizer, prompt)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **generation_kwargs(temperature, top_p,
                                                                                       max_new_tokens))
    return tokenizer.decode(out[0, 1:], skip_special_tokens=True)


def routes(text: str, layer: int = 0) -> list[tuple[str, str]]:
    """Each token of ``text`` with the memories layer ``layer`` routed it to, best first (e.g. ``"m2 m0"``)."""
    tokenizer, model = load()
    if not 0 <= layer < model.config.num_hidden_layers:
        raise ValueError(f"layer must be in [0, {model.config.num_hidden_layers}); got {layer}")
    ids = prompt_ids(tokenizer, text)
    with torch.no_grad():
        hidden = model.model(ids, output_hidden_states=True, use_cache=False).hidden_states[layer]
        block = model.model.layers[layer]
        probs = block.attn.gate(block.attn_norm(hidden)).float().softmax(-1)
        chosen = probs.topk(model.config.topk, dim=-1).indices[0, 1:]
    pieces = [tokenizer.decode([int(i)]) for i in ids[0, 1:]]
    return [(piece, " ".join(f"m{int(m)}" for m in mems)) for piece, mems in zip(pieces, chosen)]


def build_tab():
    import gradio as gr

    gr.Markdown("**Mixture-of-Memories** — a tiny MoM (2 layers, 4 gated-linear-attention memories per layer, "
                "top-2 routing, plus a shared memory) trained for minutes on a CPU on the Python language reference "
                "(`pydoc_data.topics`). It writes reference-flavoured English, not facts. Below the text: which "
                "memories the router sent each token to (each memory is written only by its tokens).")
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=3,
                                info=f"Only the last {MAX_PROMPT_TOKENS} tokens are used.")
            temperature = gr.Slider(0.0, 1.5, value=0.8, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
            max_new = gr.Slider(1, MAX_NEW_TOKENS, value=64, step=1, label="New tokens")
            layer = gr.Slider(0, 1, value=0, step=1, label="Layer shown in the routing view")
            button = gr.Button("Continue", variant="primary")
        with gr.Column():
            output = gr.Textbox(label="Text", lines=8)
            routing = gr.HighlightedText(label="Routing (token -> memories)", combine_adjacent=False)
    gr.Examples(EXAMPLES, inputs=prompt)

    def on_generate(p, t, tp, n):
        return continue_text(p, t, tp, int(n), seed=None)

    def on_route(text, lay):
        return routes(text, int(lay))

    button.click(on_generate, inputs=[prompt, temperature, top_p, max_new], outputs=output,
                 api_name="mom_generate").then(on_route, inputs=[output, layer], outputs=routing,
                                               api_name="mom_routing")
