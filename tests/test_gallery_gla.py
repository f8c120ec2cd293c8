"""The GLA gallery tab: streamed continuation of a prompt with the shipped tiny checkpoint, served over HTTP."""

import pytest
from spaces_harness import serve

from hfzoo.gallery import gla_demo


def test_greedy_continuation_extends_the_prompt():
    prompt = "The for statement is used to"
    text = gla_demo.continue_text(prompt, temperature=0.0, max_new_tokens=6)
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_streaming_yields_growing_prefixes_and_caps_long_prompts():
    tokenizer, _ = gla_demo.load()
    long_prompt = "names are bound to objects " * 200
    assert len(tokenizer(long_prompt)["input_ids"]) > gla_demo.MAX_PROMPT_TOKENS
    pieces = list(gla_demo.stream_continuation(long_prompt, temperature=0.9, top_p=0.8, max_new_tokens=5, seed=1))
    assert pieces and all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:]))
    shown = tokenizer.decode(tokenizer(long_prompt)["input_ids"][-gla_demo.MAX_PROMPT_TOKENS:])
    assert pieces[-1].startswith(shown) and len(pieces[-1]) > len(shown)


def test_generation_settings_are_clamped():
    assert gla_demo.generation_kwargs(0.0, 0.9, 10_000) == {"do_sample": False,
                                                             "max_new_tokens": gla_demo.MAX_NEW_TOKENS}
    sampled = gla_demo.generation_kwargs(0.7, 0.0, 0)
    assert sampled["do_sample"] and sampled["top_p"] == pytest.approx(0.05) and sampled["max_new_tokens"] == 1


def test_tab_serves_gla_generate():
    import gradio as gr

    with gr.Blocks() as demo:
        gla_demo.build_tab()
    with serve(demo) as client:
        text = client.predict("A class definition defines", 0.0, 0.9, 4, api_name="/gla_generate")
    # greedy, so the served endpoint gives exactly what the plain function gives
    assert text == gla_demo.continue_text("A class definition defines", temperature=0.0, max_new_tokens=4)
