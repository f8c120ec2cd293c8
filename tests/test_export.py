"""Export every registered architecture and load it where hfzoo cannot be imported."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
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
                if node.level == 1:   # `from .x import y` or `from . import x`: siblings in the folder
                    for module in [node.module] if node.module else [a.name for a in node.names]:
                        assert (folder / f"{module}.py").is_file(), (path, module)
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


# ----------------------------------------------------------------------------------------------------------------
# Publishing the usual way: save_pretrained / push_to_hub of any hfzoo model

# In a fresh interpreter without hfzoo: load the saved folder, run it, save it again (the model now comes from
# remote code: an already-flat folder), load that copy and run it too.
RESAVE_LOADER = LOADER + textwrap.dedent("""
    resaved = out_path + ".folder"
    model.save_pretrained(resaved)
    again = getattr(transformers, auto_name).from_pretrained(resaved, trust_remote_code=True).eval().to(device)
    assert type(again).__module__.startswith("transformers_modules"), type(again).__module__
    with torch.no_grad():
        out2 = again(**inputs)
    torch.save([t.cpu() for t in out2.to_tuple() if isinstance(t, torch.Tensor)], out_path + ".again")
""")


def _run_clean(script, folder, auto_name, inputs, tmp_path, *extra):
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", script, str(folder), auto_name, str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.pt"), "cpu", *extra], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _modes_are_normal(folder: Path):
    mask = os.umask(0)
    os.umask(mask)
    assert (folder.stat().st_mode & 0o777) == 0o777 & ~mask, oct(folder.stat().st_mode)
    for p in folder.iterdir():
        assert (p.stat().st_mode & 0o777) == 0o666 & ~mask, (p.name, oct(p.stat().st_mode))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_save_pretrained_loads_without_hfzoo_and_saves_again_from_remote_code(name, tmp_path):
    from hfzoo.ops.dispatch import use_backend

    arch = ARCHITECTURES[name]
    torch.manual_seed(0)
    model = arch.main_model(arch.tiny_config()).eval()
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert set(arch.auto_models) | {"AutoConfig"} <= set(config["auto_map"])
    assert (folder / f"{config['auto_map']['AutoConfig'].split('.')[0]}.py").is_file()
    _modes_are_normal(folder)
    inputs = arch.example_inputs(model.config)
    with torch.no_grad(), use_backend("reference"):
        expected = _tensors(model(**inputs))
    auto_name = next(a for a, c in arch.auto_models.items() if c is arch.main_model)
    _run_clean(RESAVE_LOADER, folder, auto_name, inputs, tmp_path)
    for outputs in (torch.load(tmp_path / "out.pt"), torch.load(tmp_path / "out.pt.again")):
        assert len(outputs) == len(expected)
        for a, b in zip(outputs, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    resaved = Path(str(tmp_path / "out.pt") + ".folder")
    assert json.loads((resaved / "config.json").read_text())["auto_map"] == config["auto_map"]
    _modes_are_normal(resaved)


def test_register_for_auto_class_then_save_pretrained(tmp_path):
    """transformers' own copier cannot follow hfzoo's imports; with the mixin it is replaced, not crashed into."""
    arch = ARCHITECTURES["gla"]
    cls = arch.main_model
    model = cls(arch.tiny_config()).eval()
    try:
        cls.register_for_auto_class("AutoModelForCausalLM")
        type(model.config).register_for_auto_class()
        model.save_pretrained(tmp_path / "m")
    finally:
        for c in (cls, type(model.config)):
            if "_auto_class" in c.__dict__:
                del c._auto_class
    assert cls._auto_class is None
    inputs = arch.example_inputs(model.config)
    with torch.no_grad():
        expected = _tensors(model(**inputs))
    _run_clean(LOADER, tmp_path / "m", "AutoModelForCausalLM", inputs, tmp_path)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt")[0], expected[0], rtol=1e-4, atol=1e-5)


def test_save_pretrained_into_a_folder_keeps_its_files_and_fails_cleanly(tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    arch = ARCHITECTURES["gla"]
    model = arch.main_model(arch.tiny_config())
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model-00001-of-00002.safetensors").write_text("stale shard of an earlier save")
    model.save_pretrained(folder)
    names = sorted(p.name for p in folder.iterdir())
    assert "tokenizer.json" in names and "model.safetensors" in names and "modeling_gla.py" in names
    assert "model-00001-of-00002.safetensors" not in names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def failing(self, save_directory, *a, **k):   # fails after writing part of the folder
        (Path(save_directory) / "config.json").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", failing)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before   # nothing changed, no temporary left
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_push_to_hub_uploads_the_standalone_folder(tmp_path, monkeypatch):
    """push_to_hub saves through the same save_pretrained (its upload is captured here, nothing leaves the machine)."""
    import transformers.utils.hub as hf_hub_utils

    arch = ARCHITECTURES["kat"]
    model = arch.main_model(arch.tiny_config())
    uploaded = tmp_path / "uploaded"

    class Repo:
        repo_id = "me/tiny-kat"

    class Api:
        def create_repo(self, *a, **k):
            return Repo()

    class Card:
        def save(self, path):
            Path(path).write_text("card")

    def upload(self, working_dir, repo_id, files_timestamps, **kwargs):
        import shutil

        shutil.copytree(working_dir, uploaded)
        return repo_id

    monkeypatch.setattr(hf_hub_utils, "hf_api", lambda *a, **k: Api(), raising=False)
    monkeypatch.setattr(hf_hub_utils, "create_and_tag_model_card", lambda *a, **k: Card())
    monkeypatch.setattr(type(model), "_upload_modified_files", upload)
    model.push_to_hub("me/tiny-kat")
    config = json.loads((uploaded / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_kat.KATForImageClassification"
    assert (uploaded / "modeling_kat.py").is_file() and (uploaded / "group_rational.py").is_file()


# ----------------------------------------------------------------------------------------------------------------
# The atomic writer


def test_atomic_directory_cleans_up_on_every_failure_path(tmp_path, monkeypatch):
    from hfzoo.utils import atomic_files
    from hfzoo.utils.atomic_files import atomic_directory

    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("first")
    _modes_are_normal(out)
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_directory(out, overwrite=True) as tmp:
                (tmp / "a").write_text("second")
                raise exc
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "a").read_text() == "first"

    real_rename = Path.rename

    def fail_moving_the_new_folder_in(self, target):
        if self.name.startswith(".out.tmp-"):
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", fail_moving_the_new_folder_in)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "a").write_text("second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "a").read_text() == "first"
    monkeypatch.setattr(Path, "rename", real_rename)

    def fail_removing_the_old_folder(p):
        if ".old-" in p.name:
            raise OSError("rm failed")
        atomic_files.shutil.rmtree(p)

    monkeypatch.setattr(atomic_files, "_remove", fail_removing_the_old_folder)
    with pytest.raises(OSError, match="rm failed"):   # the new folder is in place; the failure is not hidden
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "a").write_text("third")
    assert (out / "a").read_text() == "third"


def test_atomic_directory_refuses_symlinks_and_files(tmp_path):
    from hfzoo.utils.atomic_files import atomic_directory

    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    link = tmp_path / "out"
    link.symlink_to(target)
    with pytest.raises(FileExistsError, match="symbolic link"):
        with atomic_directory(link, overwrite=True) as tmp:
            (tmp / "x").write_text("x")
    assert link.is_symlink() and (target / "keep.txt").read_text() == "mine" and not (target / "x").exists()
    (tmp_path / "file").write_text("f")
    with pytest.raises(FileExistsError, match="not a folder"):
        with atomic_directory(tmp_path / "file", overwrite=True):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out", "precious"]
    arch = ARCHITECTURES["simvq"]
    with pytest.raises(FileExistsError, match="symbolic link"):
        export(arch.main_model(arch.tiny_config()), link, overwrite=True, card=False)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


# ----------------------------------------------------------------------------------------------------------------
# Export keeps (or adds) the tokenizer / image processor, so pipelines work on it without hfzoo

PIPELINE_LOADER = textwrap.dedent("""
    import sys, json
    class BlockHfzoo:
        def find_spec(self, name, path=None, target=None):
            if name == "hfzoo" or name.startswith("hfzoo."):
                raise ModuleNotFoundError(f"hfzoo is blocked in this test ({name})")
    sys.meta_path.insert(0, BlockHfzoo())
    import numpy as np
    from transformers import pipeline
    folder, task, out_path = sys.argv[1:4]
    pipe = pipeline(task, model=folder, trust_remote_code=True)
    if task == "text-generation":
        result = pipe("A class definition", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    elif task == "fill-mask":
        result = [(r["token_str"], round(r["score"], 5)) for r in pipe("the [MASK] statement is used to", top_k=3)]
    else:
        from PIL import Image
        image = Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype("uint8"))
        result = [(r["label"], round(r["score"], 5)) for r in pipe(image, top_k=3)]
    assert not any(m == "hfzoo" or m.startswith("hfzoo.") for m in sys.modules)
    json.dump(result, open(out_path, "w"))
""")


def _clean_pipeline(folder, task, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", PIPELINE_LOADER, str(folder), task, str(tmp_path / "r.json")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "r.json").read_text())


def test_export_of_a_fine_tuned_gla_keeps_its_tokenizer_for_pipelines(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, pipeline

    from hfzoo.cli import main
    from hfzoo.registry import checkpoint_path

    src = checkpoint_path("tiny-gla")
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():   # "fine-tuned": the weights differ from the shipped checkpoint's
        model.lm_head.weight.mul_(1.01)
    export(model, tmp_path / "from-instance", card=False)   # tokenizer found through model.name_or_path
    assert (tmp_path / "from-instance" / "tokenizer.json").is_file()

    model.save_pretrained(tmp_path / "ft")   # a Trainer/merge output without tokenizer files
    assert not (tmp_path / "ft" / "tokenizer.json").exists()
    assert main(["export", str(tmp_path / "ft"), str(tmp_path / "bare")]) == 0
    assert not (tmp_path / "bare" / "tokenizer.json").exists()
    assert main(["export", str(tmp_path / "ft"), str(tmp_path / "out"), "--tokenizer", str(src)]) == 0
    assert main(["export", str(tmp_path / "ft"), str(tmp_path / "x"), "--tokenizer", str(tmp_path / "ft")]) == 2
    assert "no tokenizer files" in capsys.readouterr().err
    expected = pipeline("text-generation", model=str(tmp_path / "out"))("A class definition", max_new_tokens=8,
                                                                       do_sample=False)[0]["generated_text"]
    assert _clean_pipeline(tmp_path / "out", "text-generation", tmp_path) == expected


def test_export_with_processor_gives_a_working_image_pipeline_without_hfzoo(tmp_path):
    from transformers import AutoModelForImageClassification

    from hfzoo.cli import main
    from hfzoo.registry import checkpoint_path

    src = checkpoint_path("tiny-kat")
    model = AutoModelForImageClassification.from_pretrained(src)
    model.save_pretrained(tmp_path / "ft")
    assert not (tmp_path / "ft" / "preprocessor_config.json").exists()
    assert main(["export", str(tmp_path / "ft"), str(tmp_path / "out"), "--processor", str(src)]) == 0
    pre = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert pre["auto_map"]["AutoImageProcessor"] == "image_processing_kat.KATImageProcessor"
    result = _clean_pipeline(tmp_path / "out", "image-classification", tmp_path)
    from hfzoo.models.kat import KATImageProcessor

    processor = KATImageProcessor.from_pretrained(src)
    image = (np.arange(64).reshape(8, 8) * 4).astype("uint8")
    with torch.no_grad():
        probs = model.eval()(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    top = probs.topk(3)
    assert [r[0] for r in result] == [model.config.id2label[int(i)] for i in top.indices]
    assert [r[1] for r in result] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_exported_mosaicbert_fills_masks_through_pipeline_without_hfzoo(tmp_path):
    from transformers import pipeline

    from hfzoo.cli import main

    assert main(["export", "tiny-mosaicbert", str(tmp_path / "out")]) == 0
    expected = pipeline("fill-mask", model=str(tmp_path / "out"))("the [MASK] statement is used to", top_k=3)
    got = _clean_pipeline(tmp_path / "out", "fill-mask", tmp_path)
    assert [g[0] for g in got] == [e["token_str"] for e in expected]
    assert [g[1] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-4)


def test_model_and_processor_saved_the_usual_way_give_a_pipeline_without_hfzoo(tmp_path):
    """A Trainer-style save: the model, then its image processor, into one folder (no hfzoo export)."""
    from transformers import AutoModelForImageClassification

    from hfzoo.models.kat import KATImageProcessor
    from hfzoo.registry import checkpoint_path

    src = checkpoint_path("tiny-kat")
    model = AutoModelForImageClassification.from_pretrained(src).eval()
    processor = KATImageProcessor.from_pretrained(src)
    model.save_pretrained(tmp_path / "run")
    written = processor.save_pretrained(tmp_path / "run")
    assert written == [str(tmp_path / "run" / "preprocessor_config.json")]
    pre = json.loads((tmp_path / "run" / "preprocessor_config.json").read_text())
    assert pre["auto_map"] == {"AutoImageProcessor": "image_processing_kat.KATImageProcessor"}
    _modes_are_normal(tmp_path / "run")
    result = _clean_pipeline(tmp_path / "run", "image-classification", tmp_path)
    image = (np.arange(64).reshape(8, 8) * 4).astype("uint8")
    with torch.no_grad():
        top = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0].topk(3)
    assert [r[0] for r in result] == [model.config.id2label[int(i)] for i in top.indices]


def test_save_pretrained_with_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class Repo:
        repo_id = "me/tiny-simvq"

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = repo_id
        return Repo()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        return "ok"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    arch = ARCHITECTURES["simvq"]
    arch.main_model(arch.tiny_config()).save_pretrained(tmp_path / "tiny-simvq", push_to_hub=True,
                                                       repo_id="me/tiny-simvq")
    assert calls["repo"] == "me/tiny-simvq"
    assert {"config.json", "model.safetensors", "modeling_simvq.py", "nearest_code.py"} <= set(calls["files"])


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_the_cards_pipeline_tag_names_a_pipeline_that_runs(name):
    """The Hub shows a card's pipeline_tag as the model's task: that pipeline must run on the shipped checkpoint."""
    from PIL import Image
    from transformers import pipeline
    from transformers.pipelines import SUPPORTED_TASKS

    from hfzoo.registry import checkpoint_path

    arch = ARCHITECTURES[name]
    if arch.pipeline_tag not in SUPPORTED_TASKS:
        # image generation is a diffusers task on the Hub: hfzoo serves it with its own pipeline (LiTPipeline),
        # which tests/test_gallery_lit.py runs on the shipped checkpoint
        assert arch.pipeline_tag == "unconditional-image-generation" and arch.demo, arch.pipeline_tag
        return
    pipe = pipeline(arch.pipeline_tag, model=str(checkpoint_path(arch.checkpoint)))
    inputs = {"text-generation": "A class definition", "fill-mask": "the [MASK] statement is used to"}
    image = Image.fromarray((np.arange(48 * 48 * 3).reshape(48, 48, 3) % 251).astype("uint8"))
    kwargs = {"max_new_tokens": 4} if arch.pipeline_tag == "text-generation" else {}
    out = pipe(inputs.get(arch.pipeline_tag, image), **kwargs)
    if arch.pipeline_tag == "image-feature-extraction":
        assert np.asarray(out).ndim >= 2 and np.isfinite(np.asarray(out)).all()   # features, not a scalar loss
    else:
        assert out and isinstance(out, list)


def test_a_users_own_subclass_saves_as_transformers_does(tmp_path):
    """Only hfzoo classes (and their remote-code copies) get the bundle; a subclass defined elsewhere is the
    user's code, which transformers' own rules cover."""
    arch = ARCHITECTURES["kat"]

    class MyKAT(arch.main_model):
        pass

    MyKAT(arch.tiny_config()).save_pretrained(tmp_path / "mine")
    assert not list((tmp_path / "mine").glob("*.py"))
    assert "auto_map" not in json.loads((tmp_path / "mine" / "config.json").read_text())


def test_export_of_a_hub_repo_keeps_its_preprocessing_files(tmp_path, monkeypatch):
    """A repo id source: its tokenizer files come from the Hub beside the weights (the download is stubbed here)."""
    import huggingface_hub

    import hfzoo.hub.export as ex

    arch = ARCHITECTURES["gla"]
    model = arch.main_model(arch.tiny_config())
    hub_files = tmp_path / "hub"
    hub_files.mkdir()
    (hub_files / "tokenizer.json").write_text('{"version": "1.0"}')
    asked = {}

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked.update(repo=repo_id, patterns=allow_patterns)
        return str(hub_files)

    monkeypatch.setattr(ex, "load_model", lambda source: (model, source))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    export("someone/tiny-gla", tmp_path / "out", card=False)
    assert asked["repo"] == "someone/tiny-gla" and "tokenizer.json" in asked["patterns"]
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"version": "1.0"}'


def test_save_pretrained_atomic_without_the_hub_bundle(tmp_path):
    """What the training scripts use for checkpoints shipped inside the package: no code copies, no auto_map,
    and the folder loads through the installed hfzoo."""
    from transformers import AutoModelForImageClassification

    from hfzoo.hub.atomic import save_pretrained_atomic

    arch = ARCHITECTURES["kat"]
    model = arch.main_model(arch.tiny_config()).eval()
    folder = save_pretrained_atomic(tmp_path / "ckpt", model, standalone=False)
    assert not list(folder.glob("*.py"))
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    inputs = arch.example_inputs(model.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
