"""The Clusters page asks for a background job and returns at once (AppTest, demo data):
the first visit shows a running job and no chart, a second session attaches to the same
job, leaving and coming back shows the same job, Cancel stops it and Compute starts it
again, and once the job is done a rerun shows the maps, tables and downloads."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from h2a.analysis.background import Job, cancel, find_job
from tests.conftest import REPO
from tests.test_background_jobs import (
    cancel_live_jobs,
    finished,
    launches,
    recorded_pid,
    wait_until,
)

PAGE = "app_pages/clusters.py"


def open_clusters(monkeypatch) -> AppTest:
    """A fresh browser session on the Clusters page (the demo dataset is the default)."""
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    at.run()
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def page_text(at: AppTest) -> str:
    parts = ([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
             + [w.value for w in at.warning] + [e.value for e in at.error])
    return "\n".join(str(p) for p in parts)


def default_job(demo_dir: Path, **changes) -> Job:
    """The job the page asks for with its default settings (ClusterConfig's and the pretrained
    preprocessing's) and ``changes`` (ClusterConfig fields, or ``size``)."""
    from h2a.analysis.cluster_config import PRETRAINED_PREPROCESS
    from h2a.analysis.cluster_jobs import clusters_spec
    from h2a.data.datasets import load_dataset
    from h2a.data.preprocess import PreprocessConfig

    params = dict(changes)
    pp = PreprocessConfig(**{**PRETRAINED_PREPROCESS, "size": params.pop("size", PRETRAINED_PREPROCESS["size"])})
    return find_job(clusters_spec(load_dataset(demo_dir), "pretrained", pp, **params))


def assert_clusters_shown(at: AppTest) -> list:
    """The page shows a finished job's answer (k = 2): ARIs, the charts, both cluster tables
    and the download; returns the tables."""
    assert not at.exception, [e.value for e in at.exception]
    labels = [m.label for m in at.metric]
    assert "ARI vs sex (map)" in labels and "ARI vs sex (full)" in labels
    assert len(at.get("plotly_chart")) >= 4  # map, bone age by cluster, share male, k sweep
    tables = [df.value for df in at.dataframe]
    assert len(tables) == 2 and all(len(t) == 2 and "% male" in t.columns for t in tables)
    assert "Download coordinates and clusters (CSV)" in [b.label for b in at.get("download_button")]
    return tables


def forget(job: Job) -> None:
    """As if nobody had asked yet (an earlier test of the session may have)."""
    cancel(job, wait_s=60)
    shutil.rmtree(job.dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def stop_leftovers():
    yield
    cancel_live_jobs(wait_s=60)


def test_the_page_returns_with_a_running_job_then_fills_in(demo_dir: Path, monkeypatch) -> None:
    job = default_job(demo_dir)
    forget(job)
    at = open_clusters(monkeypatch)
    # returned at once: the job runs in its own process, the page shows its progress
    assert job.status()["status"] in ("starting", "running")
    assert not at.get("plotly_chart") and not at.dataframe
    assert at.get("progress"), "no progress bar"
    assert "Cancel" in [b.label for b in at.button]
    assert job.name in page_text(at) and "in the background" in page_text(at)
    pid = recorded_pid(job)

    other = open_clusters(monkeypatch)  # a second user asking the same thing watches the same job
    assert job.name in page_text(other)
    assert recorded_pid(job) == pid and launches(job) == 1

    at.switch_page("app_pages/home.py").run()  # leave and come back: the same job, still going
    at.switch_page(PAGE).run()
    assert not at.exception
    assert job.name in page_text(at) or job.status()["status"] == "finished"
    assert launches(job) == 1

    assert finished(job)["status"] == "finished", job.log_tail()
    at.run()
    assert_clusters_shown(at)
    assert job.name in page_text(at) and "clusters follow" in page_text(at)
    other.run()  # the other session fills in from the same result
    assert len(other.get("plotly_chart")) >= 4 and launches(job) == 1


@contextmanager
def embeddings_held_running(demo_dir: Path, size: int):
    """The embeddings job at ``size`` px shown as running (done 5 of 240) by this test process,
    which holds its lock: a clusters job waits for it, deterministically, until cancelled."""
    from h2a.analysis.cluster_jobs import embeddings_spec
    from h2a.data.datasets import load_dataset
    from h2a.data.preprocess import PreprocessConfig
    from h2a.engine.lock import RunLock
    from h2a.run import atomic_write_json
    from h2a.processes import ProcessId

    spec = embeddings_spec(load_dataset(demo_dir), "pretrained", PreprocessConfig(size=size))
    emb = find_job(spec)
    forget(emb)
    with RunLock(emb.dir):
        atomic_write_json(emb.dir / "spec.json", spec.to_dict())
        atomic_write_json(emb.dir / "progress.json", {"status": "running", **ProcessId.of(os.getpid()).record(),
                                                      "stage": "tensor cache", "done": 5, "total": 240,
                                                      "rate": 1.0, "eta_s": 235.0, "message": "decoding"})
        yield emb
    shutil.rmtree(emb.dir, ignore_errors=True)


def test_cancel_then_compute_starts_again_and_settings_survive_navigation(demo_dir: Path, monkeypatch) -> None:
    job = default_job(demo_dir, k=4, seed=7, size=96)
    forget(job)
    with embeddings_held_running(demo_dir, 96) as emb:
        at = open_clusters(monkeypatch)
        at.select_slider(key="cl_size").set_value(96)
        at.number_input(key="cl_k").set_value(4)
        at.number_input(key="cl_seed").set_value(7)
        next(b for b in at.button if b.label == "Compute").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert job.status()["status"] in ("starting", "running") and job.name in page_text(at)
        # the clusters job waits for the embeddings job and shows its progress as its own
        st = wait_until(job, lambda s: s.get("waiting_for") == emb.name, "wait for the embeddings")
        assert st["stage"] == "embeddings: tensor cache" and st["done"] == 5 and st["total"] == 240

        at.switch_page("app_pages/home.py").run()  # leave and come back: same settings, same job
        at.switch_page(PAGE).run()
        assert at.number_input(key="cl_k").value == 4 and at.select_slider(key="cl_size").value == 96
        assert job.name in page_text(at) and "ETA" in at.get("progress")[0].proto.text

        at.button(key="cl_cancel_job").click().run()
        assert not at.exception, [e.value for e in at.exception]
        wait_until(job, lambda s: s.get("status") == "cancelled", "cancel")
        assert (emb.dir / "CANCEL").exists()  # nobody else waited for the embeddings: asked to stop too
        at.run()
        assert "was cancelled" in page_text(at) and not at.get("plotly_chart")
        assert launches(job) == 1

        next(b for b in at.button if b.label == "Compute").click().run()  # starts it again
        assert job.status()["status"] in ("starting", "running")
        assert launches(job) == 2
        cancel(job, wait_s=120)
