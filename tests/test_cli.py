"""The `hfzoo` command as a user runs it."""

import json
import subprocess
import sys

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
