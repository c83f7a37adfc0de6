"""Evaluations on disk (h2a.inference.eval_store) and pages that never evaluate inline."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def real(tiny_run):
    """The real evaluation of the tiny run on its validation split (computed once)."""
    from h2a.inference.evaluate import evaluate

    return evaluate(tiny_run, None, split="validation")


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty evaluation store for this test."""
    from h2a.inference import eval_store

    monkeypatch.setattr(eval_store, "store_dir", lambda: tmp_path / "evaluations")
    return tmp_path / "evaluations"


@pytest.fixture
def counted(monkeypatch, real) -> list[str]:
    """evaluate() replaced by the real result; the list names the thread of every call."""
    from h2a.inference import evaluate as ev

    calls: list[str] = []

    def fake(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real

    monkeypatch.setattr(ev, "evaluate", fake)
    return calls


def _key(run_dir: Path, demo_dir: Path, split: str = "validation"):
    from h2a.data.datasets import load_dataset
    from h2a.inference.eval_store import eval_key

    return eval_key(run_dir, None, load_dataset(demo_dir).fingerprint, split, False, 0)


def test_stored_evaluation_is_reused_by_a_new_session(store, counted, real, tiny_run, demo_dir) -> None:
    from h2a.inference import eval_store

    key = _key(tiny_run, demo_dir)
    metrics, preds = eval_store.evaluate_cached(key, tiny_run, None)
    assert counted == [threading.current_thread().name]
    assert eval_store.path_of(key).is_file()
    # a new session / server: nothing in memory, a key rebuilt from scratch
    again = eval_store.evaluate_cached(_key(tiny_run, demo_dir), tiny_run, None)
    assert len(counted) == 1, "the stored evaluation must be reused"
    assert again[0] == metrics and again[0]["mae"] == pytest.approx(real.metrics["mae"])
    pd.testing.assert_frame_equal(again[1], real.predictions)
    # another split is another evaluation
    assert eval_store.load(_key(tiny_run, demo_dir, "holdout")) is None


def test_retrained_model_is_a_miss(store, counted, tiny_run, demo_dir, tmp_path) -> None:
    from h2a.inference import eval_store

    run = tmp_path / "copy-of-run"
    shutil.copytree(tiny_run, run)
    eval_store.evaluate_cached(_key(run, demo_dir), run, None)
    model = run / "model.pt"
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # model.pt rewritten
    assert eval_store.load(_key(run, demo_dir)) is None
    eval_store.evaluate_cached(_key(run, demo_dir), run, None)
    assert len(counted) == 2
    model.write_bytes(model.read_bytes() + b"\0")  # same second, another size
    assert eval_store.load(_key(run, demo_dir)) is None


def test_changed_data_fingerprint_is_a_miss(store, counted, tiny_run) -> None:
    from h2a.inference import eval_store

    eval_store.evaluate_cached(eval_store.eval_key(tiny_run, None, "aaaa", "validation", False), tiny_run, None)
    assert eval_store.load(eval_store.eval_key(tiny_run, None, "aaaa", "validation", False)) is not None
    assert eval_store.load(eval_store.eval_key(tiny_run, None, "bbbb", "validation", False)) is None
    assert eval_store.load(eval_store.eval_key(tiny_run, None, "aaaa", "validation", True)) is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other key"])
def test_corrupt_stored_file_is_a_miss_and_is_replaced(store, counted, tiny_run, demo_dir, damage) -> None:
    from h2a.inference import eval_store

    key = _key(tiny_run, demo_dir)
    eval_store.evaluate_cached(key, tiny_run, None)
    path = eval_store.path_of(key)
    good = path.read_bytes()
    if damage == "other key":  # a file copied over from another evaluation
        other = eval_store.eval_key(tiny_run, None, "other", "holdout", True)
        eval_store.save(other, {"n": 1}, pd.DataFrame({"id": ["x"]}))
        path.write_bytes(eval_store.path_of(other).read_bytes())
    else:
        path.write_bytes({"garbage": b"not parquet at all", "truncated": good[: len(good) // 2],
                          "empty": b""}[damage])
    assert eval_store.load(key) is None
    metrics, _ = eval_store.evaluate_cached(key, tiny_run, None)
    assert len(counted) == 2 and metrics["n"] > 0
    assert eval_store.load(key) is not None, "the bad file is overwritten by the fresh evaluation"


def test_evaluation_page_renders_before_the_first_evaluation(monkeypatch, store, tiny_run, demo_dir, real) -> None:
    """Nothing stored: the page renders its controls and a status at once, the run is
    evaluated in the background (never in the script thread), and a rerun shows it."""
    from h2a.app import runs_ui
    from h2a.inference import evaluate as ev

    runs_ui._evaluations.clear()
    release = threading.Event()
    calls: list[str] = []

    def slow(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if threading.current_thread().name.startswith("h2a-eval"):
            release.wait(120)
        return real

    monkeypatch.setattr(ev, "evaluate", slow)
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    at.run()
    at.switch_page("app_pages/evaluation.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Bone-age evaluation" in [t.value for t in at.title]
    assert at.multiselect(key="eval_runs").value == [tiny_run.name]
    assert not [c for c in calls if not c.startswith("h2a-eval")], "evaluate() ran inside the page"
    assert not at.dataframe, "no figures before the evaluation is done"
    jobs = list(runs_ui._evaluations().jobs.values())
    assert len(jobs) == 1 and f"Evaluating {tiny_run.name}" in jobs[0].text()
    at.run()  # a second rerun (another session) joins the same job
    assert len(runs_ui._evaluations().jobs) == 1
    release.set()
    jobs[0].future.result(timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(df.value for df in at.dataframe if "MAE (mo)" in df.value.columns)
    assert table["MAE (mo)"].iloc[0] == pytest.approx(round(real.metrics["mae"], 2))
    assert len(calls) == 1 and list(store.glob("*.parquet")), "computed once and stored"


def test_a_run_whose_folder_is_elsewhere_is_evaluated_on_a_copy_of_its_images(tiny_run, demo_dir, tmp_path) -> None:
    """A shipped model on another machine: its recorded dataset path is not there. Its split is
    read from the active dataset when that holds every id of it (a copy of the same images),
    and otherwise the page is told what to do, not only that a path is missing."""
    import json
    from types import SimpleNamespace

    from h2a.app.runs_ui import split_source
    from h2a.data.datasets import load_dataset

    active = load_dataset(demo_dir)
    assert split_source(tiny_run, "validation", active) == (None, active.fingerprint)  # its own folder is here

    moved = tmp_path / "moved-run"
    shutil.copytree(tiny_run, moved)
    meta = json.loads((moved / "metadata.json").read_text())
    meta["dataset"]["path"] = str(tmp_path / "no-such-folder" / "rsna-thumbs-100")
    (moved / "metadata.json").write_text(json.dumps(meta))
    assert split_source(moved, "validation", active) == (str(active.root), active.fingerprint)

    other = SimpleNamespace(name="my-images", root=tmp_path, fingerprint="x",
                            meta=pd.DataFrame({"id": ["a", "b"]}))
    with pytest.raises(FileNotFoundError, match="not on this machine.*does not hold its .* validation images"):
        split_source(moved, "validation", other)
