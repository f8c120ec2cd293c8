"""Gallery tab: fill in ``[MASK]`` tokens with the tiny MosaicBERT trained on the Python language reference.

Every ``[MASK]`` in the text gets its top-k candidate tokens with probabilities. The logic is in plain
functions (``load``, ``fill_mask``) that tests call directly; ``build_tab`` only lays out components.
"""

from __future__ import annotations

import functools

import torch

from ..registry import checkpoint_path

CHECKPOINT = checkpoint_path("tiny-mosaicbert")
MAX_TOKENS = 512      # a demo limit (the model itself has none: ALiBi)
MAX_TOP_K = 20
HEADERS = ["mask", "rank", "token", "probability"]
EXAMPLES = [
    "the [MASK] statement is used to iterate over the elements of a sequence.",
    "an exception is [MASK] when an error is detected.",
    "a class definition defines a class [MASK].",
]


@functools.lru_cache(maxsize=1)
def load():
    """The tokenizer and model of the shipped checkpoint (loaded on first use)."""
    from transformers import BertTokenizerFast

    from ..models.mosaicbert.modeling_mosaicbert import MosaicBertForMaskedLM

    if not (CHECKPOINT / "config.json").is_file():
        raise FileNotFoundError(f"the tiny MosaicBERT checkpoint is missing at {CHECKPOINT} "
                                "(train it with scripts/train_tiny_mosaicbert.py)")
    tokenizer = BertTokenizerFast.from_pretrained(CHECKPOINT)
    model = MosaicBertForMaskedLM.from_pretrained(CHECKPOINT).eval()
    return tokenizer, model


def fill_mask(text: str, top_k: int = 5) -> tuple[str, list[list]]:
    """Predict every ``[MASK]`` in ``text``.

    Returns ``(filled, rows)``: the text with each mask replaced by its best token, and one row
    ``[mask number (1-based), rank, token, probability]`` per candidate, ``top_k`` per mask.
    Raises ``ValueError`` when the text has no ``[MASK]`` or is longer than ``MAX_TOKENS`` tokens.
    """
    tokenizer, model = load()
    top_k = int(min(max(1, top_k), MAX_TOP_K))
    enc = tokenizer(text or "", return_tensors="pt")
    ids = enc["input_ids"]
    if ids.shape[1] > MAX_TOKENS:
        raise ValueError(f"the text has {ids.shape[1]} tokens; this demo takes at most {MAX_TOKENS}")
    positions = (ids[0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
    if not positions:
        raise ValueError(f"put at least one {tokenizer.mask_token} in the text")
    with torch.no_grad():
        logits = model(**enc).logits[0]
    probs = logits[positions].float().softmax(-1)
    best_p, best_id = probs.topk(top_k, dim=-1)
    rows = []
    filled = ids[0].clone()
    for m, (ps, tids) in enumerate(zip(best_p.tolist(), best_id.tolist())):
        filled[positions[m]] = tids[0]
        for rank, (p, t) in enumerate(zip(ps, tids), start=1):
            rows.append([m + 1, rank, tokenizer.convert_ids_to_tokens(t), round(p, 4)])
    return tokenizer.decode(filled, skip_special_tokens=True), rows


def build_tab():
    import gradio as gr

    from .user_input import MAX_PROMPT_CHARS, as_gradio_errors, check_text

    gr.Markdown("**MosaicBERT** — a ~0.9M-parameter BERT with ALiBi attention and a GeGLU feed-forward, trained "
                "for a few minutes on a laptop CPU (30% masking) on the Python language reference "
                "(`pydoc_data.topics`). Write `[MASK]` where a word should be guessed; lowercase text works best.")
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="Text with [MASK]", value=EXAMPLES[0], lines=3, max_length=MAX_PROMPT_CHARS)
            top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="Candidates per mask")
            button = gr.Button("Fill", variant="primary")
        with gr.Column():
            filled = gr.Textbox(label="Best guess", lines=3)
            table = gr.Dataframe(headers=HEADERS, label="Candidates", interactive=False)
    gr.Examples(EXAMPLES, inputs=text)

    @as_gradio_errors
    def on_click(t, k):
        t = check_text(t, "text")
        if "[MASK]" not in t:   # checked here, before the model runs
            raise gr.Error("put at least one [MASK] in the text: it marks the word to guess")
        return fill_mask(t, int(k))

    button.click(on_click, inputs=[text, top_k], outputs=[filled, table], api_name="mosaicbert_fill_mask")
