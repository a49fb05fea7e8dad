"""Shell completion: the committed scripts are current, and Tab answers from the real app."""

from __future__ import annotations

import os
import subprocess
import sys

from soundsearch.cli import app  # noqa: F401  (the scripts ask this app)

from conftest import REPO

sys.path.insert(0, str(REPO / "completions"))
import generate  # noqa: E402


def test_committed_scripts_are_current():
    for shell, name in generate.SHELLS.items():
        committed = (REPO / "completions" / name).read_text()
        assert committed == generate.render(shell), f"run: python completions/generate.py ({name})"


def complete_bash(words: str) -> list[str]:
    env = dict(
        os.environ,
        _SOUNDSEARCH_COMPLETE="complete_bash",
        COMP_WORDS=words,
        COMP_CWORD=str(len(words.split(" ")) - 1),
    )
    code = "from soundsearch.cli import app; app(prog_name='soundsearch')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return done.stdout.split()


def test_bash_completes_command_names():
    assert {"index", "query", "status", "train", "eval", "models"} <= set(complete_bash("soundsearch "))
    assert complete_bash("soundsearch qu") == ["query"]


def test_bash_completes_options_of_a_command():
    options = complete_bash("soundsearch query --")
    assert "--store" in options and "--json" in options
