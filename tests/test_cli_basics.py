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
