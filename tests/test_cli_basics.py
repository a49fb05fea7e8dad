"""The CLI frame: help is fast and light, errors become one line and exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from soundsearch.cli import app

HEAVY = ["torch", "soundfile", "soxr", "joblib", "safetensors", "matplotlib"]


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ["index", "status", "query", "train", "eval", "models"]:
        assert name in result.output


def test_help_does_not_import_heavy_modules():
    # Completion runs the program on every Tab, so --help must not pay for torch & co.
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from soundsearch.cli import app\n"
        "CliRunner().invoke(app, ['--help'])\n"
        "for c in ['index','query','train','eval','status','models']:\n"
        "    CliRunner().invoke(app, [c, '--help'])\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_version_and_short_help():
    from soundsearch import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"soundsearch {__version__}"
    for args in (["-h"], ["query", "-h"], ["index", "-h"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, args
        assert "--help" in result.output and "Usage" in result.output


def test_models_command_does_not_import_torch(tmp_path):
    # The registry reads model headers only: listing models must not pay for torch.
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from soundsearch.cli import app\n"
        "r = CliRunner().invoke(app, ['models', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(json.dumps(['torch' in sys.modules, len(json.loads(r.output))]))\n"
    )
    env = dict(__import__("os").environ, SOUNDSEARCH_MODELS=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    torch_loaded, listed = json.loads(out.stdout.strip().splitlines()[-1])
    assert listed >= 1  # the shipped default model, read from its header
    assert torch_loaded is False


def _command_paths(command, path=()):
    """Every command's argv prefix, groups and their subcommands included: [(), ('index',), ...]."""
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # a group (typer's, not always click's)
        yield from _command_paths(sub, (*path, name))


def test_every_help_names_values_readably_and_has_an_example():
    import re

    from typer.main import get_command

    # Typer's own type labels: <bool>, <path>, <list[Path]>, <int range>, <logmel|aisfx|openl3>.
    type_label = re.compile(r"<[A-Za-z][\w\[\]|, ]*>")
    paths = list(_command_paths(get_command(app)))
    assert ("models", "fetch") in paths and ("train",) in paths and len(paths) == 10
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"], terminal_width=100)
        assert result.exit_code == 0, (path, result.output)
        assert not type_label.findall(result.output), (path, type_label.findall(result.output))
        assert "Example:" in result.output and "soundsearch " in result.output.split("Example:")[1], path
    # Flags take no value, so nothing stands beside them; valued options say what they take.
    index_help = CliRunner().invoke(app, ["index", "--help"], terminal_width=100).output
    assert re.search(r"--quiet\s+-q\s+No progress bar", index_help)
    assert re.search(r"--store\s+DIR\s+Feature store folder", index_help)
    assert "[PATH]..." in index_help
    query_help = CliRunner().invoke(app, ["query", "--help"], terminal_width=100).output
    assert re.search(r"--top\s+-k\s+K \[x>=1\]", query_help) and re.search(r"--model\s+-m\s+NAME\|PATH", query_help)


def test_train_and_eval_put_research_knobs_under_their_own_heading():
    def panels(name: str) -> dict[str, str]:
        text = CliRunner().invoke(app, [name, "--help"], terminal_width=100).output
        return {m.group(1): m.group(2) for m in __import__("re").finditer(r"╭─ (.+?) ─+╮\n(.*?)╰", text, flags=16)}

    train = panels("train")
    assert list(train) == ["Options", "Model variants (the paper's)", "Research knobs"]
    for everyday in ("--dataset", "--featurizer", "--out", "--epochs", "--seed", "--jobs", "--quiet", "--json"):
        assert everyday in train["Options"], everyday
    for knob in ("--batching", "--tag-weight", "--mix", "--state-weights", "--lr-schedule", "--pair-balance",
                 "--optimizer", "--weight-decay", "--input-noise", "--tower", "--head", "--dropout", "--context"):
        assert knob in train["Research knobs"] and knob not in train["Options"], knob
    assert "--no-siamese" in train["Model variants (the paper's)"]
    evaluate = panels("eval")
    assert "--variants" in evaluate["Research knobs"] and "--variants" not in evaluate["Options"]
    assert "--model" in evaluate["Options"] and "--plot" in evaluate["Options"]
