"""Checks shared by the deployment tests (Docker compose, Kubernetes, Slurm).

The deployment files cannot run here, so their tests read them and hold what they ask of
searcher against the real program: commands and flags parsed by the real typer app, and
environment variable names taken from the code.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import shlex
import sys
from pathlib import Path

import typer
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


# --- the image's pinned dependencies (constraints.txt) ----------------------------------

CONSTRAINTS_HEADER = """\
# What the image installs, pinned to the versions the tests ran with: searcher's runtime
# dependencies from pyproject.toml and everything they pull in, resolved on Linux with Python
# 3.11 (as the tensorflow/tensorflow 2.21 base images). The Dockerfile installs with -c this file.
# Written by `PYTHONPATH=. python tests/deploy_checks.py > constraints.txt` in the venv the
# tests passed in; tests/test_compose.py checks every runtime dependency is pinned here.
"""


def runtime_requirements(pyproject: Path) -> list[Requirement]:
    """The ``[project] dependencies`` of pyproject.toml (no extras)."""
    import tomllib  # Python 3.11+; only these checks need it

    return [Requirement(line) for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]


def requirements_of(name: str, extras: frozenset[str] = frozenset()) -> list[Requirement]:
    """What the installed distribution ``name`` requires here, with its markers evaluated for
    this interpreter and the given extras."""
    result = []
    for line in importlib.metadata.distribution(name).requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in extras | {""}):
            result.append(requirement)
    return result


def installed_closure(requirements: list[Requirement]) -> dict[str, str]:
    """Canonical name -> installed version of the requirements and all they require, here."""
    found: dict[str, str] = {}
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found[name] = importlib.metadata.version(requirement.name)
        todo += requirements_of(requirement.name, frozenset(requirement.extras))
    return found


def read_pins(path: Path) -> dict[str, str]:
    """Canonical name -> version of each ``name==version`` line of a constraints file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    closure = installed_closure(runtime_requirements(root / "pyproject.toml"))
    sys.stdout.write(CONSTRAINTS_HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(closure.items())))
