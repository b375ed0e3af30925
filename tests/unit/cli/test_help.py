"""--help as people read it: every option explained, every command with examples, and cheap to ask for."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from argparse_tree import commands

ROOT = Path(__file__).resolve().parents[3]
ALL = list(commands())


@pytest.mark.parametrize("name,parser", ALL, ids=[name for name, _ in ALL])
def test_every_option_and_argument_has_help(name, parser):
    missing = [action.option_strings[0] if action.option_strings else action.dest
               for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert missing == [], f"{name}: no help text for {missing}"


@pytest.mark.parametrize("name,parser", ALL, ids=[name for name, _ in ALL])
def test_every_command_ends_its_help_with_examples_of_itself(name, parser):
    text = parser.format_help()
    assert "\nexamples:\n" in text, name
    examples = text.split("\nexamples:\n", 1)[1].splitlines()
    command_lines = [line.strip() for line in examples if line.strip().startswith("selinux-mount-agent")]
    assert command_lines, name
    if name != "selinux-mount-agent":
        assert all(line.startswith(name + " ") or line == name for line in command_lines), command_lines
    # Examples are printed as written (not re-wrapped); descriptions still wrap at the terminal width.
    assert all(len(line) <= 120 for line in text.splitlines()), name


def test_examples_name_only_options_that_exist():
    """Each option an example uses is one its command accepts."""
    for name, parser in ALL:
        known = {flag for action in parser._actions for flag in action.option_strings}
        text = parser.format_help().split("\nexamples:\n", 1)[1]
        command_text = " ".join(line for line in text.splitlines() if not line.strip().startswith("#"))
        for word in command_text.split():
            if word.startswith("--") and "=" not in word and parser._subparsers is None:
                assert word in known, f"{name}: the example uses {word}, which it does not accept"


def test_help_does_not_import_pyroute2():
    """--help (of the program and of every command) stays cheap: pyroute2 is imported only to read the kernel."""
    argvs = [name.split()[1:] + ["--help"] for name, _ in ALL]
    script = f"""
import contextlib, io, json, sys
from agent.cli.main import main
loaded = []
for argv in {json.dumps(argvs)}:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
    loaded.append(sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2"))
print(json.dumps(loaded))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert len(loaded) == len(argvs) and all(modules == [] for modules in loaded), loaded
