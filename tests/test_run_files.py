"""Only ``h2a.run`` knows the names of a run's records: every other module asks a ``Run`` (or a
``JobFolder``). Read with ``ast``: a string that is a record's file name (or a path ending in
one) and an import of the name constants are what "opening it by name" looks like; a message
that mentions a file ("no config.json to resume from") is fine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from h2a.run import JobFolder, Run
from tests.conftest import REPO

RECORDS = ("metadata.json", "config.json", "progress.json", "calibration.json")
CONSTANTS = {"METADATA", "CONFIG", "PROGRESS", "CALIBRATION"}
SOURCES = sorted(p for folder in ("h2a", "app_pages") for p in (REPO / folder).rglob("*.py")
                 if p != REPO / "h2a" / "run.py")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def names_run_files(source: str) -> list[str]:
    """What in ``source`` opens a run record by name (empty: nothing)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value.strip()
            if any(text == r or text.endswith("/" + r) for r in RECORDS):
                found.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("h2a.run", "h2a.engine.runs"):
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names if a.name in CONSTANTS]
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_names_a_run_record(path: Path):
    assert not names_run_files(path.read_text()), names_run_files(path.read_text())


def test_the_check_sees_a_record_opened_by_name():
    assert names_run_files('meta = read_json(run_dir / "metadata.json")')
    assert names_run_files('p = f"{run}/progress.json"')  # an f-string's literal part
    assert names_run_files('p = "models/x/config.json"')
    assert names_run_files("from h2a.run import METADATA, read_json")
    assert not names_run_files('raise SystemExit(f"{name}: no config.json to resume from")')
    assert not names_run_files('def f():\n    """Reads calibration.json."""\n')


def test_a_run_reads_and_writes_its_records(tmp_path):
    run = Run.at(tmp_path / "r")
    assert run.meta is None and run.config is None and run.progress is None and run.calibration is None
    assert not run.finished and run.sites == [] and run.splits == {}
    run.write_config({"epochs": 3})
    run.write_meta({"task": "boneage", "splits": {"holdout": ["1", "2"]}})
    run.write_progress({"status": "running"})
    run.write_calibration({"id": "c1"})
    run.write_record("holdout", {"mae": 9.0})
    assert run.config == {"epochs": 3} and run.meta["task"] == "boneage" and run.calibration == {"id": "c1"}
    assert run.splits == {"holdout": ["1", "2"]} and run.record("holdout") == {"mae": 9.0}
    assert not run.finished  # metadata without weights is not a finished run
    run.model_file.write_bytes(b"x")
    assert run.finished
    (run.path / "metadata.json").write_text("{half a fi")  # mid-write garbage reads as absent
    assert run.meta is None
    with pytest.raises(ValueError, match="unknown run record"):
        run.record("secrets")
    folder = JobFolder.at(tmp_path / "job")
    folder.write_progress({"status": "starting"})
    assert folder.progress == {"status": "starting"} and folder.job is None


def test_a_copy_keeps_the_records_and_sites(tmp_path):
    src = Run.at(tmp_path / "src")
    src.write_config({"a": 1})
    src.write_calibration({"id": "c"})
    src.write_record("robustness", {"rows": []})
    (src.path / "sites" / "fullres").mkdir(parents=True)
    (src.path / "sites" / "fullres" / "site.json").write_text("{}")
    dest = Run.at(tmp_path / "dest")
    src.copy_records(dest)
    assert dest.config == {"a": 1} and dest.calibration == {"id": "c"} and dest.record("robustness") == {"rows": []}
    assert dest.sites == ["fullres"]


def test_the_run_name_rule_lives_in_the_core():
    from h2a.engine.config import TrainConfig, TrainingError
    from h2a.run import check_run_name, default_run_name

    assert check_run_name(" boneage-lite0.v2 ") == "boneage-lite0.v2"
    assert check_run_name(default_run_name("sex", "efficientnet_lite0")).startswith("sex-efficientnet_lite0-")
    for bad in ("", "../up", "a b", "-flag", "x" * 82, "=cmd()"):
        with pytest.raises(ValueError, match="run name"):
            check_run_name(bad)
    with pytest.raises(TrainingError, match="run name"):  # the CLI and the form both validate a TrainConfig
        TrainConfig(data="d", out="models/bad name").validate()
