"""Studies that train (tiny_cnn, 32 px, a few epochs on the demo data): pruning, a kill -9 and
its resume, two workers on one SQLite file, arms with held-out predictions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from h2a.run import read_json
from h2a.studies import StudySpec, load_study
from h2a.studies.coordinator import run_study
from h2a.studies.create import open_or_create, resolve_space
from tests.conftest import REPO

TINY = ("{arch: tiny_cnn, pretrained: false, image_size: 32, epochs: EPOCHS, batch_size: 16, "
        "holdout_fraction: 0.2, val_fraction: 0.2, max_train_images: CAP, lr: 0.01}")


def _space(tmp_path: Path, body: str, epochs: int = 3, cap: int = 96) -> str:
    p = tmp_path / "space.yaml"
    p.write_text(f"task: boneage\nbase: {TINY.replace('EPOCHS', str(epochs)).replace('CAP', str(cap))}\n{body}")
    return str(p)


def _quiet(message: str) -> None:
    pass


def test_search_with_pruning_finishes_and_records_the_pruned_trial(demo_dir: Path, tmp_path: Path, capsys,
                                                                    one_torch_thread) -> None:
    from h2a.cli import main

    # Measured on this demo data at 32 px (seed 0, one thread; deterministic): validation MAE by
    # epoch 33.4, 43.8, 59.3, 50.5 months with lr 1e-2 and 34.4, 34.4, 34.3, 34.3 with lr 1e-7.
    # Optuna's median pruner compares a trial's best value so far with the others' values at
    # the same epoch, so the 1e-7 trial is behind the 1e-2 reference at epoch 1: pruned there.
    space = _space(tmp_path, "params:\n  lr: {type: float, low: 1e-7, high: 1e-2, log: true}\n"
                             "pruning: {startup_trials: 1, warmup_epochs: 0}\n", epochs=4, cap=1000)
    spec = StudySpec(name="prune", data=str(demo_dir), space_file=space, trials=4, trial_minutes=10, pruner="median")
    study, _ = open_or_create(spec, *resolve_space(spec))
    study.enqueue_trial({"lr": 1e-2})  # the pruner's reference
    study.enqueue_trial({"lr": 1e-7})  # behind it after the first epoch
    summary = run_study(spec, log=_quiet)

    trials = summary["trials"]
    assert len(trials) == 4 and summary["n_finished"] == 4, [(t["state"], t.get("error")) for t in trials]
    first, bad = trials[0], trials[1]
    curves = [(t.number, t.state.name, t.intermediate_values) for t in load_study("prune").trials]
    assert first["state"] == "COMPLETE" and bad["state"] == "PRUNED", curves
    assert bad["params"]["lr"] == pytest.approx(1e-7)
    meta = read_json(Path(first["run_dir"]) / "metadata.json")
    assert first["value"] == pytest.approx(meta["metrics"]["mae"]) and first["run"] == "prune-t0"
    pruned_run = Path(bad["run_dir"])
    assert pruned_run.name == "prune-t1"
    assert read_json(pruned_run / "study.json")["state"] == "PRUNED"
    assert read_json(pruned_run / "metadata.json")["stop_reason"].startswith("pruned by study prune at epoch")
    assert summary["best"]["number"] != 1

    assert main(["study", "show", "prune", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {"study", "preset", "task", "metric", "direction", "n_trials", "best", "trials", "comparisons"} <= set(shown)
    assert (shown["study"], shown["task"], shown["metric"], shown["direction"]) == ("prune", "boneage", "mae", "minimize")
    assert set(shown["trials"][0]) >= {"number", "state", "params", "value", "run", "arm", "seed", "duration_s"}
    assert [t["state"] for t in shown["trials"]] == [t["state"] for t in trials]
    assert main(["study", "list", "--json"]) == 0 and "prune" in json.loads(capsys.readouterr().out)


def _wait(predicate, proc: subprocess.Popen, timeout: float = 900.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, "the study ended before it could be killed"
        time.sleep(1.0)
    raise AssertionError("timed out waiting for the study")


def test_killed_study_resumes_without_losing_finished_trials(demo_dir: Path, tmp_path: Path,
                                                              one_torch_thread) -> None:
    # Epochs take ~0.1 s here, so the trial being killed must be long enough to be caught
    # between its first checkpoint and its end however loaded the machine: 60-80 epochs.
    space = _space(tmp_path, "params:\n  epochs: {type: int, low: 60, high: 80}\n", epochs=60)
    cmd = [sys.executable, "-m", "h2a", "study", "run", "--name", "killed", "--data", str(demo_dir), "--space", space,
           "--trials", "2", "--trial-minutes", "10", "--pruner", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def mid_second_trial():
        try:
            trials = load_study("killed").trials
        except KeyError:
            return None
        running = [t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("run")]
        done = [t for t in trials if t.state.name == "COMPLETE"]
        if done and running and (Path(running[0].user_attrs["run"]) / "checkpoint.pt").exists():
            return done[0], running[0]
        return None

    try:
        done, running = _wait(mid_second_trial, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-trial: after an epoch's checkpoint, before the end
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert load_study("killed").trials[running.number].state.name == "RUNNING"  # what the kill left

    summary = run_study(StudySpec(name="killed", data=str(demo_dir)), log=_quiet)  # resume: no space needed
    by_number = {t["number"]: t for t in summary["trials"]}
    assert by_number[done.number]["state"] == "COMPLETE" and by_number[done.number]["value"] == done.value
    assert by_number[running.number]["state"] == "FAIL" and "failed_over" in by_number[running.number]
    retry = [t for t in summary["trials"] if t.get("retry_of") == running.number]
    assert len(retry) == 1 and retry[0]["state"] == "COMPLETE", summary["trials"]
    assert retry[0]["run_dir"] == running.user_attrs["run"]  # the killed run itself, resumed
    assert retry[0]["params"] == running.params
    meta = read_json(Path(retry[0]["run_dir"]) / "metadata.json")
    assert [h["epoch"] for h in meta["history"]] == list(range(1, running.params["epochs"] + 1))
    assert summary["n_finished"] == 2
    assert by_number[0].get("baseline") and by_number[0]["params"] == {"epochs": 60}  # the base, first
    assert summary["baseline"]["number"] == 0
    from h2a.studies.report import trials_frame

    assert trials_frame(summary).set_index("number")["baseline"].to_dict() == {0: True, 1: False, 2: False}


def test_two_workers_share_an_arms_study_on_one_sqlite(demo_dir: Path, tmp_path: Path, one_torch_thread) -> None:
    space = _space(tmp_path, "arms: {with-sex: {use_sex: true}, without-sex: {use_sex: false}}\n"
                             "reference: with-sex\nseeds: [0]\n", epochs=2)
    summary = run_study(StudySpec(name="pair", data=str(demo_dir), space_file=space, trial_minutes=10, workers=2),
                        log=_quiet)
    trials = load_study("pair").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], [t.user_attrs for t in trials]
    workers = {t.user_attrs["worker"]["worker"]: t.user_attrs["worker"]["pid"] for t in trials}
    assert set(workers) == {0, 1} and len(set(workers.values())) == 2  # both processes trained one
    assert {t.user_attrs["arm"] for t in trials} == {"with-sex", "without-sex"}
    for t in trials:
        run = Path(t.user_attrs["run"])
        preds = pd.read_csv(run / "holdout_predictions.csv")
        meta = read_json(run / "metadata.json")
        assert list(preds.columns) == ["id", "y", "pred"]
        assert sorted(preds["id"].astype(str)) == sorted(map(str, meta["splits"]["holdout"]))
        assert meta["train_config"]["use_sex"] == (t.user_attrs["arm"] == "with-sex")
        assert t.value == pytest.approx(meta["metrics"]["mae"])  # the value is validation, not held-out
    assert summary["reference"] == "with-sex" and len(summary["comparisons"]) == 1
