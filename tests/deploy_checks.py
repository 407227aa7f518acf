"""Checks shared by the deployment tests (Docker compose, Kubernetes, Slurm).

The deployment files cannot run here, so their tests read them and hold what they ask of
searcher against the real program: commands and flags parsed by the real typer app, and
environment variable names taken from the code.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import typer

from searcher import devices, storage, data
from searcher.cli import app

# click itself, or the copy newer typer releases vendor (typer._click).
_click_exceptions = importlib.import_module(typer.core.TyperCommand.__mro__[1].__module__.rsplit(".", 1)[0] + ".exceptions")


def markdown_commands(path: Path) -> list[list[str]]:
    """The shell words of every command line in a Markdown file's code blocks and inline code.

    Line continuations are joined, comments and blank lines skipped, and leading
    ``VAR=value`` assignments dropped.
    """
    text = re.sub(r"\\\n", " ", path.read_text())
    snippets = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
    result = []
    for snippet in snippets:
        for line in snippet.splitlines():
            line = line.strip()
            if line.startswith("#") or not line:
                continue
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)
            if words:
                result.append(words)
    return result


def searcher_args(words: list[str]) -> list[str] | None:
    """The arguments of a ``searcher ...`` command, also after ``--`` (``kubectl exec POD -- searcher ...``)."""
    starts = [i for i, w in enumerate(words) if w == "searcher" and (i == 0 or words[i - 1] == "--")]
    return words[starts[0] + 1 :] or None if starts else None


def assert_cli_accepts(args: list[str], *, where: str) -> None:
    """The real CLI knows the command and parses its arguments (types, ranges, flags).

    Parsing stops before the command runs. ``where`` names the file in the failure.
    """
    group = typer.main.get_command(app)
    name = args[0]
    assert name in group.commands, f"{where}: `searcher {name}` is not a command (the CLI has {sorted(group.commands)})"
    if "--help" in args or len(args) == 1:  # help, or a command named in prose (`searcher create`)
        return
    try:
        group.commands[name].make_context(name, list(args[1:]))
    except _click_exceptions.UsageError as e:
        raise AssertionError(f"{where}: `searcher {' '.join(args)}`: {e.format_message()}") from None


def env_names_searcher_reads() -> set[str]:
    """Environment variables searcher reads: the CLI's option fallbacks, the ``*_ENV`` names of
    its modules, and what a worker's placement sets for TensorFlow and CUDA."""
    group = typer.main.get_command(app)
    names = {
        envvar
        for command in group.commands.values()
        for param in command.params
        for envvar in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
    }
    names |= {getattr(module, attr) for module in (devices, storage, data) for attr in dir(module) if attr.endswith("_ENV")}
    names |= set(devices.WorkerPlacement(0, "0", 1, 1).env())
    return names
