"""Export every registered architecture and load it where hfzoo cannot be imported."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hfzoo.hub.export import ExportError, collect_bundle, export
from hfzoo.models import ARCHITECTURES

# Runs in a fresh interpreter: hfzoo is made unimportable, then the folder is loaded as remote code.
LOADER = textwrap.dedent("""
    import sys
    class BlockHfzoo:
        def find_spec(self, name, path=None, target=None):
            if name == "hfzoo" or name.startswith("hfzoo."):
                raise ModuleNotFoundError(f"hfzoo is blocked in this test ({name})")
    sys.meta_path.insert(0, BlockHfzoo())
    import torch, transformers
    folder, auto_name, inputs_path, out_path, device = sys.argv[1:6]
    model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval().to(device)
    assert not any(m == "hfzoo" or m.startswith("hfzoo.") for m in sys.modules), "hfzoo was imported"
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in torch.load(inputs_path).items()}
        out = model(**inputs)
    torch.save([t.cpu() for t in out.to_tuple() if isinstance(t, torch.Tensor)], out_path)
""")


def _tensors(out):
    return [t for t in out.to_tuple() if isinstance(t, torch.Tensor)]


def _export_and_compare(name, tmp_path, device):
    arch = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = arch.main_model(arch.tiny_config()).eval()
    folder = export(model, tmp_path / "export", model_id=f"hfzoo/tiny-{name}")

    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == arch.model_type
    assert set(arch.auto_models) | {"AutoConfig"} <= set(config["auto_map"])
    for path in folder.glob("*.py"):  # the bundle imports nothing from hfzoo, only single-dot siblings
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1) and not (node.module or "").startswith("hfzoo"), (path, node.lineno)
                if node.level == 1:
                    assert (folder / f"{node.module}.py").is_file(), (path, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("hfzoo") for a in node.names), (path, node.lineno)

    inputs = arch.example_inputs(model.config)
    torch.save(inputs, tmp_path / "inputs.pt")
    model.to(device)
    with torch.no_grad():
        expected = [t.cpu() for t in _tensors(model(**{k: v.to(device) if torch.is_tensor(v) else v
                                                      for k, v in inputs.items()}))]
    auto_name = next(a for a, c in arch.auto_models.items() if c is arch.main_model)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", LOADER, str(folder), auto_name, str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.pt"), device], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_exported_folder_loads_without_hfzoo(name, tmp_path):
    """CPU: the subprocess runs the reference path (no interpreter), the library model here the kernels
    under the interpreter, so this also checks the two backends agree on a whole model."""
    _export_and_compare(name, tmp_path, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_exported_folder_runs_its_kernels_on_gpu_without_hfzoo(name, tmp_path):
    """GPU: the standalone bundle picks the Triton kernels it carries and matches the library model."""
    _export_and_compare(name, tmp_path, "cuda")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_exported_folder_loads_through_auto_classes_with_hfzoo(name, tmp_path):
    """With hfzoo imported, the Auto classes resolve our model_type without remote code."""
    import transformers

    arch = ARCHITECTURES[name]
    model = arch.main_model(arch.tiny_config())
    folder = export(model, tmp_path / "m", card=False)
    auto_name = next(a for a, c in arch.auto_models.items() if c is arch.main_model)
    loaded = getattr(transformers, auto_name).from_pretrained(folder)
    assert type(loaded) is arch.main_model
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(loaded.state_dict().items())):
        assert torch.equal(a, b), k


def test_export_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path):
    arch = next(iter(ARCHITECTURES.values()))
    model = arch.main_model(arch.tiny_config())
    out = tmp_path / "out"
    export(model, out, card=False)
    with pytest.raises(FileExistsError):
        export(model, out, card=False)
    before = sorted(p.name for p in tmp_path.iterdir())

    class Boom(RuntimeError):
        pass

    def failing_card(*a, **k):
        raise Boom("card failed")

    import hfzoo.hub.export as ex

    original = ex.render_card
    ex.render_card = failing_card
    try:
        with pytest.raises(Boom):
            export(model, tmp_path / "other")
    finally:
        ex.render_card = original
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no partial folder, no temp left behind
    export(model, out, card=False, overwrite=True)
    assert (out / "model.safetensors").is_file()


def test_save_pretrained_atomic_writes_all_parts_or_nothing(tmp_path):
    from hfzoo.hub.atomic import save_pretrained_atomic

    class Part:
        def __init__(self, name, fail=False):
            self.name, self.fail = name, fail

        def save_pretrained(self, folder):
            if self.fail:
                raise OSError("disk full")
            (Path(folder) / self.name).write_text("x")

    out = save_pretrained_atomic(tmp_path / "m", Part("a.json"), Part("b.json"), files={"notes.md": "hi\n"})
    assert out == tmp_path / "m"
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json", "notes.md"]
    assert (out / "notes.md").read_text() == "hi\n"
    with pytest.raises(FileExistsError):
        save_pretrained_atomic(out, Part("c.json"))
    with pytest.raises(OSError, match="disk full"):
        save_pretrained_atomic(out, Part("c.json"), Part("d.json", fail=True), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json", "notes.md"]  # the old folder stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind


def test_bundle_rejects_imports_it_cannot_flatten(tmp_path):
    """Importing a name from a package __init__ cannot be flattened: the exporter says where and why."""
    import importlib.util

    bad = tmp_path / "bad_model_probe.py"
    bad.write_text("from hfzoo.ops import rms_norm_gated\nclass M: pass\n")
    spec = importlib.util.spec_from_file_location("hfzoo.bad_model_probe", bad)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hfzoo.bad_model_probe"] = module
    try:
        spec.loader.exec_module(module)
        with pytest.raises(ExportError, match="bad_model_probe.py:1: imports from the package"):
            collect_bundle([module.M])
    finally:
        del sys.modules["hfzoo.bad_model_probe"]
