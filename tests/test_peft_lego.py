"""LoRA-LEGO merges (hfzoo.peft.lego), peft's merges through the same API, and `hfzoo merge`."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import hfzoo
from hfzoo.cli import main
from hfzoo.peft import cli_commands
from hfzoo.peft.lego import (
    PEFT_METHODS,
    LegoOptions,
    lego_merge,
    lego_merge_weights,
    load_adapter,
    merge_adapters,
    units,
)

ROOT = Path(__file__).resolve().parents[1]


def _delta(adapter, module):
    """s·B A of one module, flattened to [out, in...] in float64."""
    a, b, s = adapter.modules[module]
    return s * (b.double().reshape(b.shape[0], b.shape[1]) @ a.double().reshape(a.shape[0], -1))


def _merged_delta(weights, module):
    a, b = weights[module]
    return b.double().reshape(b.shape[0], b.shape[1]) @ a.double().reshape(a.shape[0], -1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny GLA base and three LoRAs of different ranks/alphas (one with rsLoRA and an alpha pattern)."""
    tmp = tmp_path_factory.mktemp("lego")
    arch = hfzoo.get_architecture("gla")
    cfg = arch.tiny_config()
    torch.manual_seed(0)
    base = arch.main_model(cfg).eval()
    base.save_pretrained(tmp / "base")
    specs = [dict(r=4, lora_alpha=8), dict(r=2, lora_alpha=3), dict(r=4, lora_alpha=4, use_rslora=True,
                                                                     alpha_pattern={"o_proj": 2.0})]
    paths = []
    for i, spec in enumerate(specs):
        torch.manual_seed(10 + i)
        # init_lora_weights=False: A and B both random, so every unit is non-trivial
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(init_lora_weights=False, **spec))
        pm.peft_config["default"].base_model_name_or_path = str(tmp / "base")
        pm.save_pretrained(tmp / f"a{i}")
        paths.append(tmp / f"a{i}")
    return {"tmp": tmp, "base": base, "paths": paths, "inputs": arch.example_inputs(cfg)}


def test_units_sum_to_the_update_and_canonical_form_keeps_it(setup):
    ad = load_adapter(setup["paths"][2])
    module = next(m for m in ad.modules if m.endswith("o_proj"))
    a, b, s = ad.modules[module]
    assert s == pytest.approx(2.0 / 2.0)  # alpha_pattern 2 over sqrt(r=4) (rsLoRA)
    for canonical in (False, True):
        ua, ub = units(a, b, s, canonical=canonical)
        assert torch.allclose(ub.T @ ua, _delta(ad, module), atol=1e-12)
    ua, ub = units(a, b, s, canonical=True)
    assert torch.allclose(ua.norm(dim=1), ub.norm(dim=1))
    assert (ua.gather(1, ua.abs().argmax(1, keepdim=True)) > 0).all()


def test_concatenation_is_summation_and_k_total_reproduces_it(setup):
    ads = [load_adapter(p) for p in setup["paths"]]
    total = 4 + 2 + 4
    for output in ("none", "match_sum"):
        merged = lego_merge_weights(ads, total, LegoOptions(output_reweight=output))
        for module in ads[0].modules:
            ref = sum(_delta(ad, module) for ad in ads)
            got = _merged_delta(merged, module)
            assert torch.allclose(got, ref, atol=1e-6 * ref.abs().max().item()), (output, module)


def test_permutation_invariance(setup, tmp_path):
    """Permuting the ranks inside an adapter, or the order of the adapters, gives the same merge."""
    ads = [load_adapter(p) for p in setup["paths"]]
    ref = lego_merge_weights(ads, 3)
    g = torch.Generator().manual_seed(1)
    permuted = copy.deepcopy(ads)
    for ad in permuted:
        for module, (a, b, s) in ad.modules.items():
            perm = torch.randperm(a.shape[0], generator=g)
            assert not torch.equal(perm, torch.arange(a.shape[0])) or a.shape[0] < 3
            ad.modules[module] = (a[perm], b[:, perm], s)
            assert torch.allclose(_delta(ad, module), _delta(ads[permuted.index(ad)], module), atol=1e-6)
    for order in (permuted, permuted[::-1], [permuted[1], permuted[2], permuted[0]]):
        got = lego_merge_weights(order, 3)
        for module in ref:
            assert torch.allclose(_merged_delta(got, module), _merged_delta(ref, module), atol=1e-6)


def test_clusters_compress_and_reweighting_options(setup):
    ads = [load_adapter(p) for p in setup["paths"]]
    module = next(iter(ads[0].modules))
    exact = sum(_delta(ad, module) for ad in ads)
    a2 = lego_merge_weights(ads, 2, LegoOptions(output_reweight="none"))
    assert a2[module][0].shape[0] == 2 and torch.linalg.matrix_rank(_merged_delta(a2, module)) <= 2
    assert not torch.allclose(_merged_delta(a2, module), exact, atol=1e-3)
    # match_sum / match_mean fix the merged update's Frobenius norm
    for output, target in (("match_sum", exact.norm()),
                           ("match_mean", torch.stack([_delta(ad, module).norm() for ad in ads]).mean())):
        got = lego_merge_weights(ads, 2, LegoOptions(output_reweight=output))
        assert _merged_delta(got, module).norm().item() == pytest.approx(target.item(), rel=1e-5)
    # rank_ratio scales the "none" update by sqrt(mean rank / k)
    rr = lego_merge_weights(ads, 2, LegoOptions(output_reweight="rank_ratio"))
    assert torch.allclose(_merged_delta(rr, module), _merged_delta(a2, module) * (10 / 3 / 2) ** 0.5, atol=1e-6)
    # param reweighting changes the centroids (clusters of several units), "none" keeps plain means
    plain = lego_merge_weights(ads, 2, LegoOptions(output_reweight="none", param_reweight="none"))
    assert _merged_delta(plain, module).norm() < _merged_delta(a2, module).norm()
    # a different seed is allowed to change the clustering but the same seed is deterministic
    again = lego_merge_weights(ads, 2, LegoOptions(output_reweight="none"))
    assert torch.equal(again[module][0], a2[module][0])


def test_merged_adapter_loads_in_stock_peft(setup, tmp_path):
    ads = [load_adapter(p) for p in setup["paths"]]
    out = lego_merge(setup["paths"], tmp_path / "merged", rank=3)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 3 and cfg["lora_alpha"] == 3 and cfg["base_model_name_or_path"] == str(setup["tmp"] / "base")
    weights = lego_merge_weights(ads, 3)
    model = PeftModel.from_pretrained(copy.deepcopy(setup["base"]), out).eval()
    manual = copy.deepcopy(setup["base"])
    sd = manual.state_dict()
    for module in weights:
        key = module.removeprefix("base_model.model.") + ".weight"
        sd[key] = sd[key] + _merged_delta(weights, module).float()
    manual.load_state_dict(sd)
    with torch.no_grad():
        y = model(**setup["inputs"]).logits
        y_manual = manual(**setup["inputs"]).logits
        y_base = setup["base"](**setup["inputs"]).logits
    assert (y - y_base).abs().max() > 1e-3  # the merged adapter does something
    torch.testing.assert_close(y, y_manual, rtol=1e-5, atol=1e-5)
    # and the reload is exact: saving the loaded adapter again gives the same tensors
    model.save_pretrained(tmp_path / "resaved")
    a, b = load_file(out / "adapter_model.safetensors"), load_file(tmp_path / "resaved" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_peft_cat_matches_lego_concatenation(setup, tmp_path):
    """peft's own `cat` (weights 1) and LoRA-LEGO with k = total rank both sum the updates."""
    paths = [setup["paths"][0], setup["paths"][1]]
    merge_adapters(paths, tmp_path / "cat", method="cat", base=setup["tmp"] / "base")
    lego_merge(paths, tmp_path / "lego", rank=6, options=LegoOptions(output_reweight="none"))
    cat, lego = load_adapter(tmp_path / "cat"), load_adapter(tmp_path / "lego")
    for module in lego.modules:
        torch.testing.assert_close(_delta(cat, module), _delta(lego, module), rtol=1e-5, atol=1e-6)


def test_refusals(setup, tmp_path):
    paths = setup["paths"]
    # different target modules
    torch.manual_seed(0)
    pm = get_peft_model(copy.deepcopy(setup["base"]), LoraConfig(r=2, target_modules=["q_proj"],
                                                                 init_lora_weights=False))
    pm.save_pretrained(tmp_path / "q_only")
    with pytest.raises(ValueError, match="different modules"):
        lego_merge([paths[0], tmp_path / "q_only"], tmp_path / "x")
    # a different base model: same names, other shapes
    arch = hfzoo.get_architecture("gla")
    wide = arch.main_model(arch.tiny_config().__class__(**{**arch.tiny_config().to_dict(), "hidden_size": 48}))
    pm = get_peft_model(wide, LoraConfig(r=2, init_lora_weights=False))
    pm.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="different base models"):
        lego_merge([paths[0], tmp_path / "wide"], tmp_path / "x")
    # a different base model by name
    cfg = json.loads((paths[1] / "adapter_config.json").read_text())
    other = tmp_path / "other_base"
    other.mkdir()
    save_file(load_file(paths[1] / "adapter_model.safetensors"), other / "adapter_model.safetensors")
    (other / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "someone/else"}))
    with pytest.raises(ValueError, match="different base models"):
        lego_merge([paths[0], other], tmp_path / "x")
    with pytest.raises(ValueError, match="exceeds"):
        lego_merge(paths[:2], tmp_path / "x", rank=7)
    with pytest.raises(ValueError, match="at least two"):
        lego_merge(paths[:1], tmp_path / "x")
    with pytest.raises(ValueError, match="output_reweight"):
        LegoOptions(output_reweight="bogus")
    assert not (tmp_path / "x").exists()


def test_cli_merge_lego_and_peft_methods(setup, tmp_path, capsys):
    paths = [str(p) for p in setup["paths"]]
    assert main(["merge", "lego", *paths, "--rank", "3", "--out", str(tmp_path / "m")]) == 0
    assert load_adapter(tmp_path / "m").config["r"] == 3
    ref = lego_merge_weights([load_adapter(p) for p in paths], 3)
    got = load_adapter(tmp_path / "m")
    assert all(torch.equal(got.modules[m][0], ref[m][0]) for m in ref)
    # options reach the merge
    assert main(["merge", "lego", *paths, "--rank", "10", "--output-reweight", "none", "--param-reweight", "none",
                 "--out", str(tmp_path / "m10")]) == 0
    m10 = load_adapter(tmp_path / "m10")
    module = next(iter(m10.modules))
    exact = sum(_delta(load_adapter(p), module) for p in paths)
    torch.testing.assert_close(_delta(m10, module), exact, rtol=1e-5, atol=1e-6)
    # peft's methods by --method, base from the adapters' config
    assert main(["merge", paths[0], paths[2], "--method", "ties", "--out", str(tmp_path / "t")]) == 0
    PeftModel.from_pretrained(copy.deepcopy(setup["base"]), tmp_path / "t")
    assert main(["merge", "svd", paths[0], paths[1], "--rank", "2", "--out", str(tmp_path / "s")]) == 0
    assert load_adapter(tmp_path / "s").config["r"] == 2
    capsys.readouterr()
    # errors: one line, exit status 2, nothing written
    assert main(["merge", "lego", *paths, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hfzoo merge: error: ") and "already exists" in err and "\n" not in err
    assert main(["merge", "lego", paths[0], "--out", str(tmp_path / "one")]) == 2
    assert main(["merge", "ties", *paths, "--param-reweight", "l2", "--out", str(tmp_path / "bad")]) == 2
    assert "lego method only" in capsys.readouterr().err
    assert not (tmp_path / "one").exists() and not (tmp_path / "bad").exists()


def test_cli_lists_peft_methods_without_importing_peft():
    assert cli_commands.PEFT_METHODS == PEFT_METHODS


def test_cli_subprocess(setup, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    paths = [str(p) for p in setup["paths"]]
    proc = subprocess.run([sys.executable, "-m", "hfzoo.cli", "merge", "lego", *paths, "--rank", "4", "--out",
                           str(tmp_path / "sub")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "merged 3 adapters (lego)" in proc.stdout
    got, ref = load_adapter(tmp_path / "sub"), lego_merge_weights([load_adapter(p) for p in paths], 4)
    assert all(torch.equal(got.modules[m][1], ref[m][1]) for m in ref)
