"""The CLI frame: help is fast and light, errors become one line and exit code 1."""

from __future__ import annotations

import json
import os
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


def _modules_after(argv: list[str], env: dict | None = None, complete: str | None = None) -> list[str]:
    """The heavy modules (and numpy) loaded once `soundsearch *argv` has run, in a fresh process."""
    code = (
        "import sys, json, os\n"
        "from soundsearch.cli import app\n"
        f"sys.argv = ['soundsearch', *{argv!r}]\n"
        "try:\n"
        "    app(prog_name='soundsearch')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"sys.stderr.write('\\nLOADED ' + json.dumps([m for m in {[*HEAVY, 'numpy']!r} if m in sys.modules]))\n"
    )
    run_env = dict(os.environ, **(env or {}))
    if complete is not None:
        words = " ".join(["soundsearch", *argv])
        run_env.update(_SOUNDSEARCH_COMPLETE=complete, COMP_WORDS=words, COMP_CWORD=str(len(words.split(" ")) - 1))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, timeout=120)
    return json.loads(done.stderr.rsplit("LOADED ", 1)[1])


def test_help_and_completion_import_neither_torch_nor_numpy():
    # Completion runs the program on every Tab, so --help must not pay for torch & co. (nor for
    # numpy: under load that alone took a fifth of a second here).
    from typer.main import get_command

    for path in _command_paths(get_command(app)):
        assert _modules_after([*path, "--help"]) == [], path
    assert _modules_after(["query", "--mode", ""], complete="complete_bash") == []
    assert _modules_after(["index", "--featurizer", ""], complete="complete_bash") == []


def test_status_models_and_early_errors_do_not_import_torch(tmp_path):
    from conftest import tone, write_audio
    from soundsearch.indexing import index_paths

    store = tmp_path / "store"
    write_audio(tmp_path / "lib" / "a.wav", tone(440, 1.0, 8000), 8000)
    index_paths(store, [tmp_path / "lib"], jobs=1)
    env = {"SOUNDSEARCH_STORE": str(store), "SOUNDSEARCH_MODELS": str(tmp_path / "models")}
    for argv in (
        ["status"], ["status", "--json"],
        ["models"], ["models", "--json"],
        ["query", str(tmp_path / "missing.wav")],  # a mistyped path is answered before torch
        ["index", str(tmp_path / "missing")],
        ["status", "--store", str(tmp_path / "no-store")],
    ):
        assert "torch" not in _modules_after(argv, env), argv


def test_light_values_are_what_the_library_uses():
    # The command line shows values from soundsearch.constants so that --help needs no numpy;
    # the library reads the same module, and what it defines itself must say the same.
    import inspect

    from soundsearch import constants
    from soundsearch.constants import TUNABLE_DEFAULTS
    from soundsearch.features import get_featurizer
    from soundsearch.presence import STATES
    from soundsearch.search import ranking
    from soundsearch.training import config, pairs

    # ranking.py declares the modes as an enum; its help table is read from constants.
    assert ranking.MODES == constants.RANKING_MODES
    assert config.N_STATES == len(STATES) and pairs.SCHEMES is config.SCHEMES
    # The featurizers' constructors declare their defaults; models describes them by the table.
    for name in ("logmel", "aisfx"):
        built = get_featurizer(name).params
        assert {k: built[k] for k in TUNABLE_DEFAULTS[name]} == TUNABLE_DEFAULTS[name], name
    from soundsearch.features.openl3 import OpenL3

    signature = inspect.signature(OpenL3.__init__).parameters
    assert {k: signature[k].default for k in TUNABLE_DEFAULTS["openl3"]} == TUNABLE_DEFAULTS["openl3"]


def test_the_constants_module_imports_nothing_heavy():
    code = "import sys, json, soundsearch.constants; print(json.dumps([m for m in ('numpy', 'torch') if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(done.stdout) == []


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
