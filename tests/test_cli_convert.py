"""Every converter as a user runs it: `hfzoo convert <format> ...` through `main([...])`, the `conversions/`
scripts as subprocesses, on synthetic checkpoints written in each original format; and every bad input a
user can hand them answered by one line naming the file, exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_gla_convert import FLA_CONFIG, fla_state_dict, write_fla_folder
from test_kat_convert import HEADS, timm_state_dict
from test_mom_convert import write_source as write_mom_folder
from test_mosaicbert_convert import CFG as MOSAIC_CFG
from test_mosaicbert_convert import mosaic_state_dict
from test_simvq_convert import _source_state, _write

from hfzoo.cli import main
from hfzoo.convert import converters

ROOT = Path(__file__).resolve().parent.parent


def _fla(tmp):
    return write_fla_folder(tmp / "fla-src", FLA_CONFIG, fla_state_dict(FLA_CONFIG)), ["--dtype", "float32"]


def _kat(tmp):
    torch.save({"model": timm_state_dict(), "epoch": torch.tensor(3)}, tmp / "kat.pth")
    return tmp / "kat.pth", ["--num-heads", str(HEADS)]


def _mosaic(tmp):
    src = tmp / "mosaic-src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(MOSAIC_CFG))
    sd = mosaic_state_dict(MOSAIC_CFG)
    save_file({k: v for k, v in sd.items() if k != "cls.predictions.decoder.weight"}, str(src / "model.safetensors"))
    tok = tmp / "bert-tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(MOSAIC_CFG["vocab_size"])))
    return src, ["--tokenizer", str(tok)]


def _simvq(tmp):
    _, _, state = _source_state()
    return _write(tmp, state), ["--weights", "raw"]


def _mom(tmp):
    return write_mom_folder(tmp / "mom-src"), ["--dtype", "float32"]


def _dit(tmp):
    from test_lit_convert import _diffusers_dit

    _diffusers_dit(seed=5).save_pretrained(tmp / "dit-pipeline" / "transformer")
    return tmp / "dit-pipeline", ["--num-heads", "2"]


SOURCES = {"fla-gla": (_fla, "AutoModelForCausalLM"), "timm-kat": (_kat, "AutoModelForImageClassification"),
           "mosaicml-bert": (_mosaic, "AutoModelForMaskedLM"), "simvq": (_simvq, "AutoModel"),
           "mom-gla": (_mom, "AutoModelForCausalLM"), "dit": (_dit, "AutoModel")}


def test_every_registered_converter_is_covered_here():
    assert set(converters()) == set(SOURCES)


def _one_error_line(capsys, *needles):
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    assert err[0].startswith("hfzoo ") and ": error: " in err[0], err[0]
    for needle in needles:
        assert str(needle) in err[0], (needle, err[0])
    return err[0]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_convert_command_end_to_end(name, tmp_path, capsys):
    import transformers

    import hfzoo  # noqa: F401  (registers the Auto classes)

    make, auto = SOURCES[name]
    src, options = make(tmp_path)
    out = tmp_path / "out"
    assert main(["convert", name, str(src), str(out), *options]) == 0
    printed = capsys.readouterr().out
    assert f"converted {src} -> {out}" in printed
    assert f"{name}: " in printed            # the converter said what it was doing
    model = getattr(transformers, auto).from_pretrained(out)
    assert model.config.model_type.startswith("hfzoo_")
    assert json.loads((out / "config.json").read_text())["auto_map"]   # loads without hfzoo too
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary left behind
    # the same command again refuses to overwrite, then --overwrite replaces
    capsys.readouterr()   # drop the loading bar of from_pretrained above
    assert main(["convert", name, str(src), str(out), *options]) == 2
    _one_error_line(capsys, "already exists")
    assert main(["convert", name, str(src), str(out), "--overwrite", *options]) == 0


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_conversion_script_runs_as_a_subprocess(name, tmp_path):
    """conversions/<x>_to_<y>.py as a user runs it, with its options, and -q."""
    scripts = {"fla-gla": "fla_to_gla.py", "timm-kat": "timm_kat_to_kat.py",
               "mosaicml-bert": "mosaicml_to_mosaicbert.py", "simvq": "simvq_to_hfzoo.py",
               "mom-gla": "mom_to_hfzoo.py", "dit": "dit_to_lit.py"}
    src, options = SOURCES[name][0](tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HFZOO_PROGRESS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "conversions" / scripts[name]), str(src), str(tmp_path / "o"),
                           *options], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"converted {src} -> {tmp_path / 'o'}" in proc.stdout
    assert (tmp_path / "o" / "config.json").is_file() and (tmp_path / "o" / "model.safetensors").is_file()


def test_progress_bar_with_hfzoo_progress(tmp_path, capsys, monkeypatch):
    """HFZOO_PROGRESS=1 forces the bar a large checkpoint gets (the tiny ones here stay below the size)."""
    src, options = _fla(tmp_path)
    monkeypatch.setenv("HFZOO_PROGRESS", "1")
    assert main(["convert", "fla-gla", str(src), str(tmp_path / "o"), *options]) == 0
    err = capsys.readouterr().err
    assert "reading weights" in err and "100%" in err, err
    assert main(["export", str(tmp_path / "o"), str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert "export: 100%" in err and "5/5" in err, err
    monkeypatch.setenv("HFZOO_PROGRESS", "0")
    assert main(["export", str(tmp_path / "o"), str(tmp_path / "e2")]) == 0
    assert "%|" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file, exit 2


def _truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_and_garbage_safetensors(tmp_path, capsys):
    src, options = _fla(tmp_path)
    _truncate(src / "model.safetensors")
    assert main(["convert", "fla-gla", str(src), str(tmp_path / "o"), *options]) == 2
    _one_error_line(capsys, src / "model.safetensors", "safetensors")
    (tmp_path / "kat.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert main(["convert", "timm-kat", str(tmp_path / "kat.safetensors"), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, tmp_path / "kat.safetensors")
    assert not (tmp_path / "o").exists()


class _Touch:
    """A pickle that would create a file if anything ran it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickles_that_are_refused_or_cut_short(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    torch.save({"model": {"w": torch.zeros(2)}, "evil": _Touch(marker)}, tmp_path / "evil.pth")
    assert main(["convert", "timm-kat", str(tmp_path / "evil.pth"), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, tmp_path / "evil.pth", "weights_only")
    assert not marker.exists()
    torch.save({"state": {"model": {"x": _Touch(marker)}}}, tmp_path / "evil.pt")
    assert main(["convert", "mosaicml-bert", str(tmp_path / "evil.pt"), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, tmp_path / "evil.pt")
    assert not marker.exists()

    src, _ = _kat(tmp_path)
    _truncate(src)
    assert main(["convert", "timm-kat", str(src), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, src)
    folder, _ = _simvq(tmp_path)
    ckpt = next(folder.rglob("*.ckpt"))
    _truncate(ckpt, 0.3)
    assert main(["convert", "simvq", str(folder), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, ckpt)
    (tmp_path / "junk.pth").write_bytes(os.urandom(256))
    assert main(["convert", "timm-kat", str(tmp_path / "junk.pth"), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, tmp_path / "junk.pth")
    assert not (tmp_path / "o").exists()


def test_dit_checkpoints_cut_short_name_the_file(tmp_path, capsys):
    src, options = _dit(tmp_path)
    weights = next(src.rglob("diffusion_pytorch_model.safetensors"))
    _truncate(weights)
    assert main(["convert", "dit", str(src), str(tmp_path / "o"), *options]) == 2
    _one_error_line(capsys, weights, "safetensors")
    torch.save({"ema": {"w": torch.zeros(2)}}, tmp_path / "DiT.pt")
    _truncate(tmp_path / "DiT.pt")
    assert main(["convert", "dit", str(tmp_path / "DiT.pt"), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, tmp_path / "DiT.pt", "weights_only=True")
    assert not (tmp_path / "o").exists()


def test_config_and_weights_that_do_not_match(tmp_path, capsys):
    cfg = dict(FLA_CONFIG, hidden_size=32)   # the weights are 64 wide
    src = write_fla_folder(tmp_path / "fla", cfg, fla_state_dict(FLA_CONFIG))
    assert main(["convert", "fla-gla", str(src), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, src, "shape")
    (src / "config.json").write_text("{ truncated")
    assert main(["convert", "fla-gla", str(src), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, src / "config.json")

    src, _ = _mosaic(tmp_path)
    (src / "config.json").write_text(json.dumps(dict(MOSAIC_CFG, hidden_size=30, num_attention_heads=3)))
    assert main(["convert", "mosaicml-bert", str(src), str(tmp_path / "o")]) == 2
    _one_error_line(capsys, src)

    # a saved hfzoo folder whose config no longer fits its weights: export and card say which file
    from hfzoo.models import ARCHITECTURES

    arch = ARCHITECTURES["gla"]
    arch.main_model(arch.tiny_config()).save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(cfg, hidden_size=48, intermediate_size=96)))
    capsys.readouterr()   # drop the writing bar of save_pretrained above
    for cmd in (["export", str(tmp_path / "m"), str(tmp_path / "e")], ["card", str(tmp_path / "m")]):
        assert main(cmd) == 2
        _one_error_line(capsys, tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    _truncate(tmp_path / "m" / "model.safetensors", 0.7)
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "e")]) == 2
    _one_error_line(capsys, tmp_path / "m" / "model.safetensors")
    assert not (tmp_path / "e").exists()


def test_converters_reject_unknown_options(tmp_path, capsys):
    from hfzoo.convert import fla_gla, mosaicml_bert, simvq_ckpt, timm_kat

    src, _ = _kat(tmp_path)
    for mod, kwargs in ((timm_kat, {"rational_grops": 4}), (simvq_ckpt, {"weigths": "raw"}),
                        (fla_gla, {"dtpye": "float32"}), (mosaicml_bert, {"tokeniser": "x"})):
        with pytest.raises(TypeError, match=next(iter(kwargs))):
            mod.convert(src, tmp_path / "o", **kwargs)
    with pytest.raises(SystemExit) as e:
        main(["convert", "timm-kat", str(src), str(tmp_path / "o"), "--rational-grops", "4"])
    assert e.value.code == 2
    assert "unrecognized arguments: --rational-grops" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_source_is_one_line(tmp_path, capsys):
    for name in sorted(SOURCES):
        assert main(["convert", name, str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
        _one_error_line(capsys, tmp_path / "nope")


def test_ctrl_c_and_unexpected_errors(tmp_path, capsys, monkeypatch):
    """Ctrl-C: one line, exit 130, nothing written. An unexpected exception: one line with its type, exit 2;
    HFZOO_TRACEBACK=1 lets the traceback through for a bug report."""
    from hfzoo.convert import timm_kat

    src, options = _kat(tmp_path)

    def interrupted(sd, config):
        raise KeyboardInterrupt

    monkeypatch.setattr(timm_kat, "convert_state_dict", interrupted)
    assert main(["convert", "timm-kat", str(src), str(tmp_path / "o"), *options]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["hfzoo convert: interrupted (nothing was left half-written)"]

    def bug(sd, config):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(timm_kat, "convert_state_dict", bug)
    assert main(["convert", "timm-kat", str(src), str(tmp_path / "o"), *options]) == 2
    _one_error_line(capsys, src, "ZeroDivisionError: division by zero")
    monkeypatch.setenv("HFZOO_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        main(["convert", "timm-kat", str(src), str(tmp_path / "o"), *options])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kat.pth"]
