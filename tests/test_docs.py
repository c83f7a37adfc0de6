"""The docs cannot rot: every ``h2a`` command in a fenced block of the README, docs/ and the
model cards parses with today's command line (sub-command, flags and choices), and every
page the README links to exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from h2a.cli import build_parser
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)


def commands(path: Path) -> list[str]:
    """The h2a command lines of the fenced blocks of ``path`` (continuations joined)."""
    out = []
    for block in FENCE.findall(path.read_text()):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" # ")[0].strip()
            for part in re.split(r"\s*(?:&&|\|)\s*", line):
                m = re.match(r"^(?:\S*/)?(?:\.venv/bin/)?(?:h2a|python -m h2a)\s+(.*)$", part)
                if m and not part.startswith(("torchrun", "bash")):
                    out.append(m.group(1))
    return out


ALL = [(p.relative_to(REPO).as_posix(), c) for p in DOCS for c in commands(p)]


def test_the_docs_show_commands():
    assert len(ALL) >= 15, ALL
    assert {p for p, _ in ALL} >= {"README.md", "docs/training.md"}


@pytest.mark.parametrize("where, command", ALL, ids=[f"{p}: {c[:40]}" for p, c in ALL])
def test_documented_command_parses(where, command, capsys):
    parser = build_parser()
    try:
        parser.parse_args(shlex.split(command))
    except SystemExit as exc:
        pytest.fail(f"{where}: `h2a {command}` does not parse: {capsys.readouterr().err.strip()} ({exc.code})")


def test_readme_links_resolve():
    text = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|models)/[^)#]+)\)", text):
        assert (REPO / target).exists(), target
    assert len(text.splitlines()) <= 150
