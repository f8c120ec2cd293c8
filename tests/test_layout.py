"""Layout rules the exporter and the design depend on."""

import ast
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


def test_data_flows_one_way():
    """ops never import models; models never import hub, peft or the gallery."""
    for path in _modules():
        sub = path.relative_to(ROOT).parts[0]
        for target in _imported_hfzoo_packages(path):
            top = target.split(".")[1] if target.count(".") else ""
            if sub == "ops":
                assert top in ("ops", ""), f"{path}: ops imports {target}"
            if sub == "models":
                assert top not in ("hub", "peft", "gallery", "cli", "convert"), f"{path}: models import {target}"


def test_every_architecture_has_a_card_template_and_a_prefixed_model_type():
    from hfzoo.hub.cards import template_path

    for name, arch in hfzoo.ARCHITECTURES.items():
        assert arch.model_type.startswith("hfzoo_"), arch.model_type
        assert template_path(name).read_text().startswith("---\n{{ card_data }}\n---")
