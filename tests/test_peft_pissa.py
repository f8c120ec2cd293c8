"""PiSSA on every hfzoo architecture (default targets, exact residual), `hfzoo pissa init` / `to-lora`."""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

import hfzoo
from hfzoo.cli import main
from hfzoo.ops.dispatch import use_backend
from hfzoo.peft.pissa import pissa_init

ROOT = Path(__file__).resolve().parents[1]
ARCHS = sorted(hfzoo.ARCHITECTURES)


def _tensors(out):
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def _tiny(name, seed=0):
    arch = hfzoo.get_architecture(name)
    cfg = arch.tiny_config()
    torch.manual_seed(seed)
    return arch, arch.main_model(cfg).eval(), arch.example_inputs(cfg)


@pytest.mark.parametrize("name", ARCHS)
def test_default_targets_are_registered_and_match_linears(name):
    arch, model, _ = _tiny(name)
    assert arch.lora_target_modules, f"{name} declares no LoRA targets"
    assert PEFT_TARGETS[arch.model_type] == list(arch.lora_target_modules)
    for target in arch.lora_target_modules:
        hits = [m for n, m in model.named_modules() if n == target or n.endswith("." + target)]
        assert hits and all(isinstance(m, torch.nn.Linear) for m in hits), (name, target)


@pytest.mark.parametrize("name", ARCHS)
def test_pissa_residual_is_exact(name):
    """Before training, residual base + PiSSA adapter gives the original outputs (no target_modules named)."""
    arch, model, inputs = _tiny(name)
    with torch.no_grad():
        ref = _tensors(model(**inputs))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(init_lora_weights="pissa", r=4)).eval()
    assert len(pm.base_model.targeted_module_names) >= 1
    with torch.no_grad():
        got = _tensors(pm(**inputs))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5, msg=f"{name}: {k}")
    # the residual really differs from the original weights, and is what the adapter's product restores
    residual = pm.get_base_model()
    changed = 0
    for mod_name in pm.base_model.targeted_module_names:
        layer = residual.get_submodule(mod_name)
        w0 = original[mod_name + ".weight"]
        w_res = layer.get_base_layer().weight
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        changed += int((w_res - w0).abs().max() > 1e-3 * w0.abs().max())
        torch.testing.assert_close(w_res + delta, w0, rtol=1e-5, atol=1e-6)
    assert changed == len(pm.base_model.targeted_module_names)


def test_pissa_fast_svd_and_kernel_backed_layers():
    """pissa_niter_N is exact too, and gradients reach the adapters of layers whose outputs feed the Triton
    kernels (GLA's q/k/v into chunk_gla, KAT's fc1 into the group-rational kernel), matching the reference."""
    for name in ("gla", "kat"):
        arch, model, inputs = _tiny(name)
        with torch.no_grad():
            ref = _tensors(model(**inputs))
        pm = pissa_init(copy.deepcopy(model), 4, niter=4)
        key = next(iter(ref))
        grads = {}
        for backend in ("reference", "triton"):
            pm.zero_grad()
            with use_backend(backend):
                out = _tensors(pm(**inputs))
            torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-4)
            out[key].float().square().mean().backward()
            grads[backend] = {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}
        kernel_fed = [n for n in grads["triton"] if any(t in n for t in ("q_proj", "k_proj", "v_proj", "fc1"))]
        assert kernel_fed
        for n in grads["triton"]:
            assert grads["triton"][n].abs().max() > 0, n
            torch.testing.assert_close(grads["triton"][n], grads["reference"][n], rtol=1e-3, atol=1e-6)


def test_pissa_errors():
    _, model, _ = _tiny("gla")
    with pytest.raises(ValueError, match="exceeds the size"):
        pissa_init(copy.deepcopy(model), 64)
    with pytest.raises(ValueError, match="rank must be"):
        pissa_init(copy.deepcopy(model), 0)
    with pytest.raises(ValueError, match="niter"):
        pissa_init(copy.deepcopy(model), 2, niter=-1)


CHECK_WITHOUT_HFZOO = textwrap.dedent("""
    import json, sys
    class BlockHfzoo:
        def find_spec(self, name, path=None, target=None):
            if name == "hfzoo" or name.startswith("hfzoo."):
                raise ModuleNotFoundError(f"hfzoo is blocked in this test ({name})")
    sys.meta_path.insert(0, BlockHfzoo())
    import torch, transformers
    from peft import PeftModel
    out = %(out)r
    tok = transformers.AutoTokenizer.from_pretrained(out + "/residual", trust_remote_code=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(out + "/residual", trust_remote_code=True).eval()
    model = PeftModel.from_pretrained(model, out + "/adapter").eval()
    ids = tok("def f(x): return x + 1", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        print("RESULT " + json.dumps(model(ids).logits.tolist()))
    assert not any(m == "hfzoo" or m.startswith("hfzoo.") for m in sys.modules), "hfzoo was imported"
""")


def test_cli_pissa_init_then_to_lora(tmp_path, capsys):
    """`hfzoo pissa init tiny-gla`: the exported residual + adapter load without hfzoo and give the original
    outputs; after a few training steps, `hfzoo pissa to-lora` gives a LoRA whose outputs on the original
    model equal the trained PiSSA model's."""
    from transformers import AutoTokenizer

    from hfzoo.hub.export import load_model

    out = tmp_path / "pissa"
    assert main(["pissa", "init", "tiny-gla", "--rank", "4", "--niter", "2", "--out", str(out)]) == 0
    meta = json.loads((out / "pissa.json").read_text())
    assert meta["rank"] == 4 and meta["init"] == "pissa_niter_2"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["init_lora_weights"] is True

    original, _ = load_model("tiny-gla")
    original.eval()
    tok = AutoTokenizer.from_pretrained(hfzoo.checkpoint_path("tiny-gla"))
    ids = tok("def f(x): return x + 1", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = original(ids).logits

    # residual + adapter, loaded where hfzoo cannot be imported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = CHECK_WITHOUT_HFZOO % {"out": str(out)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    standalone = torch.tensor(json.loads(line[len("RESULT "):]))
    torch.testing.assert_close(standalone, ref, rtol=1e-4, atol=1e-4)

    # fine-tune a few steps on the residual, save, convert
    residual, _ = load_model(out / "residual")
    model = PeftModel.from_pretrained(residual, out / "adapter", is_trainable=True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        trained = model(ids).logits
    assert (trained - ref).abs().max() > 1e-2
    model.save_pretrained(tmp_path / "trained")
    capsys.readouterr()
    assert main(["pissa", "to-lora", str(tmp_path / "trained"), "--pissa", str(out), "--out",
                 str(tmp_path / "lora")]) == 0
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["base_model_name_or_path"] == str(hfzoo.checkpoint_path("tiny-gla"))
    lora = PeftModel.from_pretrained(original, tmp_path / "lora").eval()
    with torch.no_grad():
        converted = lora(ids).logits
    torch.testing.assert_close(converted, trained, rtol=1e-4, atol=1e-4)
    # the pissa folder is untouched by the conversion
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4

    # errors: one line, status 2
    capsys.readouterr()
    assert main(["pissa", "to-lora", str(tmp_path / "trained"), "--pissa", str(tmp_path), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hfzoo pissa: error: ") and "pissa init" in err and "\n" not in err
    assert main(["pissa", "init", "tiny-gla", "--rank", "4", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["pissa", "init", "tiny-gla", "--rank", "999", "--out", str(tmp_path / "big")]) == 2
    assert not (tmp_path / "big").exists() and not (tmp_path / "x").exists()


def test_import_hfzoo_registers_targets_when_peft_is_imported_later():
    code = textwrap.dedent("""
        import importlib.util, sys
        import hfzoo
        assert "peft" not in sys.modules, "import hfzoo imported peft"
        assert importlib.util.find_spec("peft") is not None  # a probe (as transformers makes) does not import
        assert "peft" not in sys.modules
        from peft import LoraConfig, get_peft_model
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as m
        arch = hfzoo.get_architecture("kat")
        model = get_peft_model(arch.main_model(arch.tiny_config()), LoraConfig(r=2))
        print(sorted(m[arch.model_type]), len(model.base_model.targeted_module_names))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("]")[-1].strip() == "8"
