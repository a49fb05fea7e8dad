"""Docs that cannot drift: CI runs the README's test command, every command is documented."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from soundsearch.cli import app

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def shell_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def command_names() -> list[str]:
    return [c.name for c in typer.main.get_command(app).commands.values()]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    ci_command = [line for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert len(ci_command) == 1
    assert ci_command[0].strip() in shell_blocks(README)


def test_readme_has_the_two_setup_commands():
    blocks = shell_blocks(README)
    assert any("pip install torch==2.13.0" in b and "pytest" in b for b in blocks)
    main_job = [b for b in blocks if "soundsearch index" in b and "soundsearch query" in b]
    assert main_job and "pip install torch==2.13.0" in main_job[0]
    # The example the main job queries is bundled.
    query_file = re.search(r"soundsearch query (\S+)", main_job[0]).group(1)
    assert (REPO / query_file).is_file()


def test_every_command_is_documented_with_an_example():
    runner = CliRunner()
    for name in command_names():
        assert f"soundsearch {name}" in README, f"README does not document `soundsearch {name}`"
        result = runner.invoke(app, [name, "--help"], terminal_width=100)
        assert result.exit_code == 0
        assert "Example" in result.output, f"`soundsearch {name} --help` has no example"
