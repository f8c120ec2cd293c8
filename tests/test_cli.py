"""The `hfzoo` command as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hfzoo.cli import main
from hfzoo.models import ARCHITECTURES


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "hfzoo.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("list", "export", "card", "convert", "demo"):
        assert cmd in out.stdout


def test_list_shows_every_architecture(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name, arch in ARCHITECTURES.items():
        assert name in text and arch.model_type in text


def test_export_and_card_from_a_saved_folder(tmp_path, capsys):
    arch = ARCHITECTURES["gla"]
    model = arch.main_model(arch.tiny_config())
    model.save_pretrained(tmp_path / "src")
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "out"), "--model-id", "me/tiny"]) == 0
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["auto_map"]["AutoConfig"].startswith("configuration_gla.")
    assert "me/tiny" in (tmp_path / "out" / "README.md").read_text()
    assert main(["card", str(tmp_path / "src"), "-o", str(tmp_path / "card.md")]) == 0
    assert (tmp_path / "card.md").read_text().startswith("---")


@pytest.mark.parametrize("args,needle", [
    (["export", "/no/such/folder/x", "/tmp/hfzoo-out-never"], "neither a model folder"),
    (["card", "definitely-not-a-checkpoint"], "neither a model folder"),
])
def test_bad_input_gives_one_line_and_exit_code_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("hfzoo ")


def test_export_into_existing_folder_is_refused(tmp_path, capsys):
    arch = ARCHITECTURES["gla"]
    arch.main_model(arch.tiny_config()).save_pretrained(tmp_path / "src")
    (tmp_path / "out").mkdir()
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_unknown_command_exits_2():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_conversion_scripts_are_thin_entry_points_over_registered_converters():
    """conversions/<source>_to_<arch>.py import the package converter and run `hfzoo convert <source>`."""
    import runpy
    from pathlib import Path

    from hfzoo.convert import converters

    registered = converters()
    scripts = sorted((Path(__file__).resolve().parent.parent / "conversions").glob("*_to_*.py"))
    assert len(scripts) == len(registered)
    for script in scripts:
        ns = runpy.run_path(str(script), run_name="imported")
        assert registered[ns["SOURCE"]].convert is ns["convert"], script
        with pytest.raises(SystemExit) as exc:
            main(["convert", ns["SOURCE"], "--help"])
        assert exc.value.code == 0


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_cards_describe_the_shipped_checkpoint_only_when_exporting_it(name, tmp_path, capsys):
    from hfzoo.hub.cards import PROVENANCE

    arch = ARCHITECTURES[name]
    assert main(["card", arch.checkpoint]) == 0
    shipped = capsys.readouterr().out
    assert arch.checkpoint in shipped and PROVENANCE not in shipped and "tiny" in shipped.lower()
    arch.main_model(arch.tiny_config()).save_pretrained(tmp_path / "other")
    assert main(["card", str(tmp_path / "other")]) == 0
    other = capsys.readouterr().out
    assert PROVENANCE in other and arch.checkpoint not in other
    assert not [line for line in other.lower().splitlines() if "tiny checkpoint" in line or "small models" in line]


def test_every_argument_has_help_and_version_works(capsys):
    """`hfzoo <cmd> --help` documents every argument of every command and converter."""
    import argparse

    from hfzoo.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])
            elif not isinstance(action, (argparse._HelpAction,)):
                yield path, action

    undocumented = [(" ".join(p), a.dest) for p, a in walk(build_parser(), ["hfzoo"]) if not a.help]
    assert not undocumented, undocumented
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("hfzoo ")


def test_every_command_as_a_subprocess(tmp_path):
    """The entry point as a user types it (list and card run through main() above: each subprocess pays the
    whole import): --version, export, convert --help, and an error."""
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("hfzoo "), out.stderr
    out = run_cli("export", "tiny-mosaicbert", str(tmp_path / "e"), "--model-id", "me/bert")
    assert out.returncode == 0, out.stderr
    assert "export: writing the model card" in out.stdout and (tmp_path / "e" / "tokenizer.json").is_file()
    out = run_cli("convert", "--help")
    assert out.returncode == 0 and all(name in out.stdout for name in ("fla-gla", "timm-kat", "mosaicml-bert", "simvq"))
    out = run_cli("export", str(tmp_path / "missing"), str(tmp_path / "x"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_demo_command_serves_the_gallery(tmp_path):
    """`hfzoo demo --port P` starts the gallery; the page answers over HTTP."""
    import time
    import urllib.request

    from spaces_harness import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hfzoo.cli", "demo", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**__import__("os").environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                    config = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()[-2000:]
                assert time.time() < deadline, "the gallery did not start"
                time.sleep(1)
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        assert {arch.title for arch in ARCHITECTURES.values()} <= labels
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_cards_say_how_to_install_and_how_to_use_without_hfzoo(name, tmp_path, capsys):
    from hfzoo.hub.cards import INSTALL, TRANSFORMERS_FLOOR

    arch = ARCHITECTURES[name]
    assert main(["card", arch.checkpoint]) == 0
    card = capsys.readouterr().out
    assert "pip install hfzoo" not in card and "hfzoo[" not in card
    assert INSTALL in card and "trust_remote_code=True" in card and f"({TRANSFORMERS_FLOOR} or" in card
    header = card.split("---")[1]
    assert f"pipeline_tag: {arch.pipeline_tag}" in header, header


def test_transformers_floor_is_the_same_everywhere():
    import tomllib

    from hfzoo.hub.cards import TRANSFORMERS_FLOOR

    root = Path(__file__).resolve().parent.parent
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"transformers>={TRANSFORMERS_FLOOR},<6" in deps
    reqs = (root / "spaces" / "gallery" / "requirements.txt").read_text().splitlines()
    assert f"transformers>={TRANSFORMERS_FLOOR},<6" in reqs
    assert not [r for r in reqs if r.strip().startswith("hfzoo")]   # not on PyPI: the Space carries the package
    assert f"transformers` {TRANSFORMERS_FLOOR} or newer" in (root / "README.md").read_text()


def test_space_runs_from_a_copy_of_the_package(tmp_path):
    """The Space as its README says to publish it: app.py beside a copy of hfzoo/, nothing installed from PyPI."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    space = tmp_path / "space"
    shutil.copytree(root / "spaces" / "gallery", space)
    shutil.copytree(root / "hfzoo", space / "hfzoo", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import runpy, hfzoo; ns = runpy.run_path('app.py', run_name='space'); "
              "print(hfzoo.__file__); print(type(ns['demo']).__name__)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=space, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith(str(space / "hfzoo")) and lines[-1] == "Blocks", lines


def test_help_and_list_load_neither_torch_nor_models():
    """`hfzoo --help` and `hfzoo list` answer at once: building the parser (every converter's options included)
    and listing the registry import no torch, transformers model code or Gradio."""
    code = ("import sys, contextlib, io\n"
            "from hfzoo.cli import build_parser, main\n"
            "build_parser()\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['list'])\n"
            "heavy = [m for m in ('torch', 'gradio', 'transformers.modeling_utils') if m in sys.modules]\n"
            "heavy += [m for m in sys.modules if m.startswith('hfzoo.models.') and '.modeling_' in m]\n"
            "print(heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout
