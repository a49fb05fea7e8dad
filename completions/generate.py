"""Regenerate the shell completion scripts in this folder from the Typer app.

    python completions/generate.py

The scripts are thin: on every Tab they run `soundsearch` itself, which answers from the
Typer app, so they only change when Typer's completion protocol does. tests/test_completions.py
fails when a committed script differs from what this prints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHELLS = {"bash": "soundsearch.bash", "zsh": "_soundsearch", "fish": "soundsearch.fish"}


def render(shell: str) -> str:
    env = dict(os.environ, _SOUNDSEARCH_COMPLETE=f"source_{shell}")
    code = "from soundsearch.cli import app; app(prog_name='soundsearch')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout


def main() -> None:
    for shell, name in SHELLS.items():
        (HERE / name).write_text(render(shell))


if __name__ == "__main__":
    main()
