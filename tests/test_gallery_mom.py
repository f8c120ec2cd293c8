"""The MoM gallery tab: continuation with the shipped tiny checkpoint and the per-token routing view, over HTTP."""

import pytest
from spaces_harness import serve

from hfzoo.gallery import mom_demo


def test_greedy_continuation_extends_the_prompt():
    prompt = "The for statement is used to"
    text = mom_demo.continue_text(prompt, temperature=0.0, max_new_tokens=6)
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_routing_view_names_the_topk_memories_of_every_token():
    tokenizer, model = mom_demo.load()
    text = "A class definition defines"
    pairs = mom_demo.routes(text, layer=1)
    assert "".join(piece for piece, _ in pairs) == text
    assert len(pairs) == len(tokenizer(text)["input_ids"])
    for _, label in pairs:
        memories = label.split()
        assert len(memories) == model.config.topk == len(set(memories))
        assert all(0 <= int(m[1:]) < model.config.num_memories for m in memories)
    with pytest.raises(ValueError, match="layer"):
        mom_demo.routes(text, layer=5)


def test_generation_settings_are_clamped():
    assert mom_demo.generation_kwargs(0.0, 0.9, 10_000) == {"do_sample": False,
                                                             "max_new_tokens": mom_demo.MAX_NEW_TOKENS}
    sampled = mom_demo.generation_kwargs(0.7, 0.0, 0)
    assert sampled["do_sample"] and sampled["top_p"] == pytest.approx(0.05) and sampled["max_new_tokens"] == 1


def test_tab_serves_generate_and_routing():
    import gradio as gr

    with gr.Blocks() as demo:
        mom_demo.build_tab()
    with serve(demo) as client:
        text = client.predict("A class definition defines", 0.0, 0.9, 4, api_name="/mom_generate")
        routed = client.predict(text, 0, api_name="/mom_routing")
    assert text == mom_demo.continue_text("A class definition defines", temperature=0.0, max_new_tokens=4)
    assert len(routed) == len(mom_demo.routes(text, 0))
