"""Layout rules the exporter and the design depend on."""

import ast
import json
from collections import defaultdict
from pathlib import Path

import hfzoo

ROOT = Path(hfzoo.__file__).resolve().parent


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        if "checkpoints" in path.parts:
            continue
        yield path


def test_module_basenames_are_unique():
    """Flattened remote code puts modules side by side, so two modules may not share a file name."""
    seen = defaultdict(list)
    for path in _modules():
        if path.name != "__init__.py":
            seen[path.name].append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, clashes


def _imported_hfzoo_packages(path: Path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = ["hfzoo", *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
        pkg = parts
    else:
        pkg = parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hfzoo"):
                yield target
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("hfzoo"):
                    yield a.name


def _violation(rel: tuple[str, ...], target: str) -> str | None:
    """Why module ``hfzoo/<rel>`` may not import ``target``, or None when it may."""
    parts = target.split(".")
    top = parts[1] if len(parts) > 1 else ""
    allowed = {"ops": ("ops", "utils"), "utils": ("utils",), "layers": ("ops", "layers", "utils"),
               "models": ("ops", "layers", "utils", "models", "registry")}.get(rel[0])
    if allowed is not None and top not in allowed:
        return f"{rel[0]} may import only {', '.join(allowed)}"
    if rel[0] == "models" and top == "models" and len(rel) > 2 and len(parts) > 2 and parts[2] != rel[1]:
        return f"the {rel[1]} model imports another model"
    return None


def test_data_flows_one_way():
    """ops -> layers -> models -> (hub, convert, peft, gallery) -> cli: ops import only ops (and utils); layers
    only ops, layers and utils; models only ops, layers, utils and their own package -- never another model."""
    for path in _modules():
        rel = path.relative_to(ROOT).parts
        for target in _imported_hfzoo_packages(path):
            why = _violation(rel, target)
            assert why is None, f"{path}: imports {target}: {why}"


def test_layout_rule_reports_the_imports_it_forbids():
    gla = ("models", "gla", "modeling_gla.py")
    assert _violation(gla, "hfzoo.models.mosaicbert.modeling_mosaicbert") == "the gla model imports another model"
    assert _violation(gla, "hfzoo.hub.export") is not None
    assert _violation(("layers", "packing.py"), "hfzoo.models.gla.cache_gla") is not None
    assert _violation(("ops", "gla.py"), "hfzoo.layers.norms") is not None
    assert _violation(gla, "hfzoo.layers.packing") is None
    assert _violation(gla, "hfzoo.models.gla.cache_gla") is None


def test_every_architecture_has_a_card_template_and_a_prefixed_model_type():
    from hfzoo.hub.cards import template_path

    for name, arch in hfzoo.ARCHITECTURES.items():
        assert arch.model_type.startswith("hfzoo_"), arch.model_type
        assert template_path(name).read_text().startswith("---\n{{ card_data }}\n---")


def test_shipped_checkpoints_hold_no_code_copies():
    """Checkpoints inside the package load through the installed hfzoo: a copy of the remote code (which
    ``save_pretrained`` writes for the Hub) would go stale beside the package it was copied from."""
    root = Path(__file__).resolve().parent.parent / "hfzoo" / "checkpoints"
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        assert not list(folder.glob("*.py")), folder
        assert "auto_map" not in json.loads((folder / "config.json").read_text()), folder
