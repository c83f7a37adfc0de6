"""`h2a study confirm`: a search's best trial against its base settings, on validation (which
decides) and then once on held-out; stored in the study, shown by `study show`, the report
and the Studies page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from h2a.engine.lock import RunLock
from h2a.settings import get_settings
from h2a.studies import StudySpec, load_study
from h2a.studies import confirm as confirm_mod
from h2a.studies.confirm import confirm_search
from h2a.studies.coordinator import run_study
from h2a.studies.create import open_or_create, resolve_space
from h2a.studies.errors import StudyError
from h2a.studies.storage import job_dir
from h2a.studies.trial_queue import enqueue_baseline
from tests.conftest import open_page
from tests.study_fixtures import arm_study, search_study, search_with_base
from tests.test_study_page import storage  # noqa: F401 - the fixture: a study storage of each test's own
from tests.test_study_runner import _quiet

N_IMAGES = 200


@pytest.fixture(autouse=True)
def _no_job_folders_left():
    """Confirming writes the study's job folder into the shared workspace (the page lists
    job folders as studies): remove this module's, so later page tests see none of them."""
    yield
    from h2a.studies.storage import studies_dir

    for d in studies_dir().glob("cf-*"):
        shutil.rmtree(d, ignore_errors=True)


def _fake_predictions(monkeypatch, gain: dict[tuple[str, str], float], noise: float = 0.3) -> list:
    """``save_predictions`` writing constructed frames: every run errs by the same 8-month
    pattern, minus ``gain[(split, run suffix)]`` months on every image (plus a little noise)."""
    calls = []
    rng = np.random.default_rng(0)
    ids = [str(5000 + i) for i in range(N_IMAGES)]
    y = rng.uniform(12, 216, N_IMAGES)
    err = np.abs(rng.normal(0, 8, N_IMAGES)) + 2

    def fake(run_dir, task, split="holdout", views=0, flip_tta=True, progress=None):
        calls.append((Path(run_dir).name, split, views, flip_tta))
        g = gain.get((split, Path(run_dir).name.rsplit("-", 1)[1]), 0.0)
        pred = y + np.sign(rng.normal(size=N_IMAGES)) * (err - g) + rng.normal(0, noise, N_IMAGES)
        path = Path(run_dir) / f"{split}_predictions.csv"
        pd.DataFrame({"id": ids, "y": y, "pred": pred}).to_csv(path, index=False)
        return path

    monkeypatch.setattr(confirm_mod, "save_predictions", fake)
    return calls


def test_validation_decides_and_held_out_is_measured_once(storage, monkeypatch, capsys) -> None:
    from h2a.cli import main

    search_with_base("cf-adopt", get_settings().models_dir)
    # trial 1 (best) is 2 months better than the base on validation, no better on held-out
    calls = _fake_predictions(monkeypatch, {("validation", "t1"): 2.0})
    rec = confirm_search("cf-adopt", views=4, log=_quiet)
    assert (rec["best"]["number"], rec["baseline"]["number"], rec["reused"]) == (1, 0, False)
    assert sorted(calls) == sorted([("cf-adopt-t1", "validation", 0, False), ("cf-adopt-t0", "validation", 0, False),
                                    ("cf-adopt-t1", "holdout", 4, True), ("cf-adopt-t0", "holdout", 4, True)])
    v, h = rec["validation"], rec["holdout"]
    assert v["significant"] and v["difference"] == pytest.approx(-2.0, abs=0.2) and v["n_images"] == N_IMAGES
    assert v["ci_high"] < 0 and v["verdict"].startswith("trial 1 is 2.0 months better than trial 0 (base)")
    assert not h["significant"] and h["ci_low"] < 0 < h["ci_high"]
    assert rec["adopt"] and "adopt its settings" in rec["decision"]
    assert set(rec["holdout_values"]) == {"trial 1", "trial 0 (base)"} and rec["n_holdout"] == N_IMAGES

    # stored: shown by `study show`, and a second call does not look at held-out again
    assert load_study("cf-adopt").user_attrs["confirmation"]["adopt"] is True
    monkeypatch.setattr(confirm_mod, "save_predictions", lambda *a, **k: pytest.fail("measured held-out twice"))
    assert confirm_search("cf-adopt", views=4, log=_quiet)["reused"] is True
    assert main(["study", "show", "cf-adopt", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["confirmation"]["decision"] == rec["decision"]
    assert main(["study", "show", "cf-adopt"]) == 0
    assert "decision: trial 1 beats the base settings" in capsys.readouterr().out


def test_a_lead_within_noise_keeps_the_base(storage, monkeypatch) -> None:
    search_with_base("cf-noise", get_settings().models_dir)
    _fake_predictions(monkeypatch, {("validation", "t1"): 0.05, ("holdout", "t1"): 0.05}, noise=3.0)
    rec = confirm_search("cf-noise", views=0, log=_quiet)
    assert rec["validation"]["ci_low"] < 0 < rec["validation"]["ci_high"]
    assert not rec["adopt"] and "the base settings stand" in rec["decision"]


def test_the_base_as_best_is_measured_alone(storage, monkeypatch) -> None:
    search_with_base("cf-base", get_settings().models_dir, values=(9.0, 10.0, 11.0))
    calls = _fake_predictions(monkeypatch, {})
    rec = confirm_search("cf-base", views=2, log=_quiet)
    assert rec["validation"] is None and rec["holdout"] is None and not rec["adopt"]
    assert "the base settings (trial 0) had the best validation MAE" in rec["decision"]
    assert calls == [("cf-base-t0", "validation", 0, False), ("cf-base-t0", "holdout", 2, True)]
    assert list(rec["holdout_values"]) == ["trial 0 (base)"]


def test_what_cannot_be_confirmed_says_why(storage, monkeypatch, capsys) -> None:
    from h2a.cli import main

    models = get_settings().models_dir
    arm_study("cf-arms", models)
    search_study("cf-nobase", models)
    search_with_base("cf-locked", models)
    _fake_predictions(monkeypatch, {})
    with pytest.raises(StudyError, match="not a search"):
        confirm_search("cf-arms", log=_quiet)
    with pytest.raises(StudyError, match="base settings' trial has not finished"):
        confirm_search("cf-nobase", log=_quiet)
    with RunLock(job_dir("cf-locked")):  # the study's trials run (its coordinator holds the lock)
        with pytest.raises(StudyError, match="already running here"):
            confirm_search("cf-locked", log=_quiet)
    assert "confirmation" not in load_study("cf-locked").user_attrs
    assert main(["study", "confirm", "cf-arms"]) == 2
    assert "not a search" in capsys.readouterr().err
    assert main(["study", "confirm", "no-such-study"]) == 2


def test_a_stop_request_ends_a_confirmation_and_stores_nothing(storage, monkeypatch) -> None:
    from h2a.studies.lock import STOP

    search_with_base("cf-stop", get_settings().models_dir)

    def stopped(run_dir, task, split="holdout", views=0, flip_tta=True, progress=None):
        (job_dir("cf-stop") / STOP).touch()  # what `h2a study stop` does, arriving mid-evaluation
        progress(1, 10, "")

    monkeypatch.setattr(confirm_mod, "save_predictions", stopped)
    with pytest.raises(confirm_mod.ConfirmStopped):
        confirm_search("cf-stop", log=_quiet)
    assert "confirmation" not in load_study("cf-stop").user_attrs
    prog = json.loads((job_dir("cf-stop") / "progress.json").read_text())
    assert prog["status"] == "stopped" and "nothing stored" in prog["message"]


def test_report_and_page_show_the_confirmation(storage, monkeypatch, tmp_path) -> None:
    from h2a.app import study_ui
    from h2a.studies.report import write_report

    search_with_base("cf-page", get_settings().models_dir)
    search_with_base("cf-todo", get_settings().models_dir)
    _fake_predictions(monkeypatch, {("validation", "t1"): 2.0})
    confirm_search("cf-page", views=4, log=_quiet)

    report = write_report("cf-page", None, tmp_path / "report").read_text()
    assert "## Best trial against the base settings" in report and "**Decision:** trial 1 beats" in report
    assert "The search finds settings that beat its base settings" in report  # the findings row
    assert (tmp_path / "report" / "confirmation.csv").exists()

    at = open_page("app_pages/studies.py")
    at.selectbox(key="study_pick").set_value("cf-page")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(t.label == "Best vs base" for t in at.tabs)
    assert any(s.value.startswith("Decision: trial 1 beats the base settings") for s in at.success)
    table = next(d.value for d in at.dataframe if "split" in d.value.columns)
    assert list(table["split"]) == ["validation (one view; decides)", "held-out (measured once)"]
    assert (table.loc[0, "significant"], table.loc[1, "significant"]) == ("yes", "no")

    started = []
    monkeypatch.setattr(study_ui, "start_confirm_job", lambda name: started.append(name))
    at.selectbox(key="study_pick").set_value("cf-todo")
    at.run()
    next(b for b in at.button if b.label == "Measure the best trial against the base").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert started == ["cf-todo"]


def test_confirm_on_a_trained_search(demo_dir: Path, tmp_path: Path, storage, one_torch_thread) -> None:
    """Two real tiny trials: the base and one other; the validation figures confirm reads are
    the ones the study chose on (same images, same procedure, same weights)."""
    space = tmp_path / "space.yaml"
    space.write_text("task: boneage\nbase: {arch: tiny_cnn, pretrained: false, image_size: 32, epochs: 2, "
                     "batch_size: 16, holdout_fraction: 0.2, val_fraction: 0.2, max_train_images: 96, lr: 0.01}\n"
                     "params:\n  lr: {type: float, low: 1e-6, high: 1e-2, log: true}\n")
    spec = StudySpec(name="cf-real", data=str(demo_dir), space_file=str(space), trials=2, trial_minutes=10,
                     pruner="none")
    study, space_obj = open_or_create(spec, *resolve_space(spec))
    assert enqueue_baseline(study, space_obj, spec.data)
    study.enqueue_trial({"lr": 1e-6})  # barely moves from its start: a clear loser or a clear winner
    summary = run_study(spec, log=_quiet)
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE", "COMPLETE"]

    rec = confirm_search("cf-real", views=1, log=_quiet)
    values = {t["number"]: t["value"] for t in summary["trials"]}
    best = min(values, key=values.get)
    assert rec["best"]["number"] == best and rec["baseline"]["number"] == 0
    runs = {t["number"]: Path(t["run_dir"]) for t in summary["trials"]}
    for n, run in runs.items():
        val = pd.read_csv(run / "validation_predictions.csv")
        assert float(np.mean(np.abs(val["pred"] - val["y"]))) == pytest.approx(values[n], rel=1e-3)
        assert len(pd.read_csv(run / "holdout_predictions.csv")) == rec["n_holdout"] > 0
    if best != 0:
        assert rec["validation"]["value_arm"] == pytest.approx(values[best], rel=1e-3)
        assert rec["adopt"] == (rec["validation"]["significant"] and rec["validation"]["difference"] < 0)


def test_confirm_in_the_background_names_a_broken_run(storage) -> None:
    """The page's button: a detached `h2a study confirm` under the study's lock, whose
    failure (a trial's run folder emptied since) reaches the status the page shows."""
    import time

    from h2a.studies import start_confirm_job, study_job_status

    search_with_base("cf-bg", get_settings().models_dir)  # the run folders hold no model
    start_confirm_job("cf-bg")
    with pytest.raises(StudyError, match="already running"):
        start_confirm_job("cf-bg")  # the job holds the study's lock until it ends (seconds from now)
    deadline = time.monotonic() + 300
    while (job := study_job_status("cf-bg"))["status"] in ("running", "starting") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job["status"] == "failed", job
    assert "trial 1" in job["message"] and "cf-bg-t1" in job["message"], job["message"]
    assert "confirmation" not in load_study("cf-bg").user_attrs
