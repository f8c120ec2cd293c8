"""`hfzoo convert mom-gla`: MoM-repository MomGLAForCausalLM folders -> hfzoo MoM, checked against a forward
pass written directly on the source tensors (the source layout: fused MLP gate_proj, unfused g_norm, per-memory
ModuleLists, router `gate`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err
from safetensors.torch import save_file

from hfzoo.cli import main
from hfzoo.ops.dispatch import use_backend

ROOT = Path(__file__).resolve().parent.parent
D, H, HKV, M, TOPK, INTER, VOCAB, LAYERS = 16, 2, 1, 3, 2, 32, 53, 2
KDIM = D // H * HKV           # key width of one memory (per key/value head group)


def source_config(**overrides):
    cfg = {"model_type": "mom_gla", "architectures": ["MomGLAForCausalLM"], "hidden_size": D, "expand_k": 1,
           "expand_v": 1, "num_heads": H, "num_kv_heads": HKV, "num_hidden_layers": LAYERS,
           "intermediate_size": INTER, "vocab_size": VOCAB, "num_experts": M, "topk": TOPK, "capacity": 1.0,
           "shared_mem": True, "single_expert": False, "fuse_norm": False, "norm_eps": 1e-6,
           "tie_word_embeddings": False, "use_short_conv": False, "hidden_act": "swish", "aux_loss_scale": 0.01}
    cfg.update(overrides)
    return cfg


def source_state(seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.3):
        return torch.randn(*shape, generator=g) * std

    s = {"model.embeddings.weight": r(VOCAB, D, std=1.0), "model.norm.weight": 1 + r(D), "lm_head.weight": r(VOCAB, D)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        s[p + "attn_norm.weight"] = 1 + r(D)
        s[p + "mlp_norm.weight"] = 1 + r(D)
        s[p + "attn.q_proj.weight"] = r(D, D)
        s[p + "attn.gate.weight"] = r(M, D, std=1.0)
        for name in [f"k_proj.{m}" for m in range(M)] + ["shared_k"]:
            s[p + f"attn.{name}.weight"] = r(KDIM, D)
        for name in [f"v_proj.{m}" for m in range(M)] + ["shared_v"]:
            s[p + f"attn.{name}.weight"] = r(KDIM, D)
        for name in [f"gk_proj.{m}" for m in range(M)] + ["shared_gk"]:
            s[p + f"attn.{name}.0.weight"] = r(16, D)
            s[p + f"attn.{name}.1.weight"] = r(KDIM, 16)
            s[p + f"attn.{name}.1.bias"] = r(KDIM, std=2.0) + 1
        s[p + "attn.g_proj.weight"] = r(D, D)
        s[p + "attn.o_proj.weight"] = r(D, D)
        s[p + "attn.g_norm.weight"] = 1 + r(D // H)
        s[p + "mlp.gate_proj.weight"] = r(2 * INTER, D)
        s[p + "mlp.down_proj.weight"] = r(D, INTER)
    return s


def rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def source_forward(s, ids):
    """The source model's forward for one unpadded sequence, token by token, straight from its tensors."""
    x = s["model.embeddings.weight"][ids]                       # [T, D]
    K = V = D // H
    for i in range(LAYERS):
        p = f"model.layers.{i}.attn."
        h = rms(x, s[f"model.layers.{i}.attn_norm.weight"])
        states = {m: torch.zeros(HKV, K, V) for m in list(range(M)) + ["shared"]}
        outs = []
        for t in range(len(ids)):
            ht = h[t]
            probs = torch.softmax(s[p + "gate.weight"] @ ht, -1)
            w, top = probs.topk(TOPK)
            mix = [(f"k_proj.{int(m)}", f"v_proj.{int(m)}", f"gk_proj.{int(m)}", int(m), wm / w.sum())
                   for m, wm in zip(top, w)] + [("shared_k", "shared_v", "shared_gk", "shared", 1.0)]
            q = (s[p + "q_proj.weight"] @ ht).view(HKV, H // HKV, K)
            o = torch.zeros(HKV, H // HKV, V)
            for kn, vn, gn, m, wm in mix:
                k = (s[p + kn + ".weight"] @ ht).view(HKV, K)
                v = (s[p + vn + ".weight"] @ ht).view(HKV, V)
                gk = s[p + gn + ".1.weight"] @ (s[p + gn + ".0.weight"] @ ht) + s[p + gn + ".1.bias"]
                decay = (F.logsigmoid(gk) / 16).exp().view(HKV, K)
                states[m] = states[m] * decay[..., None] + k[..., None] * v[:, None, :]
                o = o + wm * K ** -0.5 * torch.einsum("hgk,hkv->hgv", q, states[m])
            o = o.reshape(H, V)
            gate = (s[p + "g_proj.weight"] @ ht).view(H, V)
            outs.append((rms(o, s[p + "g_norm.weight"]) * F.silu(gate)).reshape(-1))
        x = x + torch.stack(outs) @ s[p + "o_proj.weight"].T
        hm = rms(x, s[f"model.layers.{i}.mlp_norm.weight"])
        gate, up = (hm @ s[f"model.layers.{i}.mlp.gate_proj.weight"].T).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ s[f"model.layers.{i}.mlp.down_proj.weight"].T
    return rms(x, s["model.norm.weight"]) @ s["lm_head.weight"].T


def write_source(folder, config=None, state=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or source_config()))
    save_file(state or source_state(), str(folder / "model.safetensors"))
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def test_registered_as_a_converter():
    from hfzoo.convert import converters

    assert "mom-gla" in converters()


def test_command_line_conversion_matches_the_source_forward(tmp_path):
    from transformers import AutoModelForCausalLM

    import hfzoo  # noqa: F401

    src = write_source(tmp_path / "src")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "hfzoo.cli", "convert", "mom-gla", str(src), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "tokenizer_config.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hfzoo_mom" and config["num_memories"] == M and config["shared_mem"] is True
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, VOCAB, (11,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), use_backend("reference"):
        logits = model(ids[None]).logits[0]
    assert rel_err(logits, source_forward(source_state(), ids)) < 1e-5


def test_newer_config_names_and_single_kv_proj(tmp_path):
    state = {k: v for k, v in source_state().items()
             if not any(f".{n}_proj." in k for n in ("k", "v", "gk"))}          # shared_* only
    cfg = source_config(single_kv_proj=True, num_memories=M, shared_mem=False)
    del cfg["num_experts"], cfg["single_expert"]
    src = write_source(tmp_path / "src", cfg, state)
    assert main(["convert", "mom-gla", str(src), str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["single_kv_proj"] is True and config["num_memories"] == M


def test_errors_name_the_problem(tmp_path):
    from hfzoo.convert.mom_gla import convert

    with pytest.raises(ValueError, match="use_short_conv"):
        convert(write_source(tmp_path / "a", source_config(use_short_conv=True)), tmp_path / "oa")
    with pytest.raises(ValueError, match="capacity"):
        convert(write_source(tmp_path / "b", source_config(capacity=0.5)), tmp_path / "ob")
    with pytest.raises(ValueError, match="model_type"):
        convert(write_source(tmp_path / "c", source_config(model_type="gla")), tmp_path / "oc")
    state = source_state()
    del state["model.layers.1.attn.v_proj.2.weight"]
    state["model.layers.0.attn.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"missing keys: \['model.layers.1.attn.v_proj.2.weight'\].*unexpected"):
        convert(write_source(tmp_path / "d", state=state), tmp_path / "od")
    assert not (tmp_path / "od").exists()       # nothing half-written
    with pytest.raises(ValueError, match="not a folder"):
        convert(tmp_path / "nowhere", tmp_path / "oe")
