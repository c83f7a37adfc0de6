"""AppTest of the training and evaluation pages: start a tiny run, watch it, evaluate it."""

from __future__ import annotations

import time
from pathlib import Path

from h2a.app.plain import plain
from h2a.run import read_json
from h2a.settings import get_settings
from tests.conftest import open_page, settle


def test_training_page_starts_a_run_and_shows_progress(demo_dir, monkeypatch) -> None:
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    at = open_page("app_pages/training.py")
    assert any("CPU" in w.value for w in at.warning)  # the device is named, with the speed warning
    at.selectbox(key="boneage_arch").set_value("tiny_cnn").run()  # outside the form: reruns the page
    at.text_input(key="boneage_name").set_value("page-run")
    at.select_slider(key="boneage_size").set_value(64)
    at.number_input(key="boneage_epochs").set_value(2)
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    run_dir = get_settings().models_dir / "page-run"
    assert (run_dir / "config.json").exists() and (run_dir / "job.json").exists()
    deadline = time.time() + 300
    seen_running = False
    while time.time() < deadline:
        status = (read_json(run_dir / "progress.json") or {}).get("status")
        seen_running |= status in ("running", "caching")
        if status in ("finished", "failed", "diverged", "stopped"):
            break
        time.sleep(1)
    assert status == "finished", (run_dir / "log.txt").read_text()[-2000:]
    at.run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert plain("page-run") in text and "finished" in text  # the folder's name, as text
    bars = [p.value for p in at.get("progress")]
    assert bars and bars[0] == 100  # epoch bar complete
    assert len(at.get("plotly_chart")) >= 1  # live curves
    table = at.dataframe[-1].value
    assert "page-run" in set(table["run"])


def _stopped_run(demo_dir: Path, name: str) -> Path:
    """A run killed before its first checkpoint: its config.json, and a progress.json that
    still says 'running' for a process that is gone."""
    import json
    import subprocess
    from dataclasses import asdict

    from h2a.data.preprocess import PreprocessConfig
    from h2a.engine.config import TrainConfig

    run_dir = get_settings().models_dir / name
    run_dir.mkdir(parents=True)
    cfg = TrainConfig(data=str(demo_dir), out=str(run_dir), arch="tiny_cnn", pretrained=False, epochs=3,
                      preprocess=PreprocessConfig(size=48).to_dict(), batch_size=32, workers=0, device="cpu")
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg)))
    gone = subprocess.Popen(["true"])
    gone.wait()
    (run_dir / "progress.json").write_text(json.dumps({"status": "running", "pid": gone.pid, "epoch": 1,
                                                       "epochs": 3, "history": []}))
    return run_dir


def _fill_form(at, name: str) -> None:
    at.selectbox(key="boneage_arch").set_value("tiny_cnn").run()
    at.text_input(key="boneage_name").set_value(name)
    at.select_slider(key="boneage_size").set_value(64)
    at.number_input(key="boneage_epochs").set_value(2)
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def _settings_shown(at) -> dict:
    [frame] = [d.value for d in at.dataframe if list(d.value.columns) == ["setting", "value"]]
    return dict(zip(frame["setting"], frame["value"]))


def test_reusing_a_stopped_runs_name_asks_resume_or_another_name(demo_dir, monkeypatch) -> None:
    """It used to resume the old run silently, with its old settings, ignoring the form."""
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    run_dir = _stopped_run(demo_dir, "reuse-me")
    saved = (run_dir / "config.json").read_text()
    at = open_page("app_pages/training.py")
    _fill_form(at, "reuse-me")
    assert not (run_dir / "job.json").exists()  # nothing started yet: asked first
    assert (run_dir / "config.json").read_text() == saved
    assert any(f"stopped run named **{plain('reuse-me')}**" in w.value and "form's settings are not used" in w.value
               for w in at.warning)
    shown = _settings_shown(at)
    assert shown["epochs"] == "3" and shown["preprocess.size"] == "48"  # the run's own settings, not the form's

    next(b for b in at.button if b.label == "Choose another name").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any(plain("reuse-me") in w.value for w in at.warning)
    assert at.text_input(key="boneage_name").value == ""
    assert not (run_dir / "job.json").exists()

    _fill_form(at, "reuse-me")
    next(b for b in at.button if b.label == f"Resume {plain('reuse-me')}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert (run_dir / "job.json").exists() and (run_dir / "config.json").read_text() == saved
    deadline = time.time() + 300
    while time.time() < deadline:
        status = (read_json(run_dir / "progress.json") or {}).get("status")
        if status in ("finished", "failed", "diverged", "stopped"):
            break
        time.sleep(1)
    assert status == "finished", (run_dir / "log.txt").read_text()[-2000:]
    meta = read_json(run_dir / "metadata.json")
    assert meta["train_config"]["epochs"] == 3 and meta["preprocess"]["size"] == 48


def test_training_form_offers_only_what_applies_to_the_architecture(demo_dir, monkeypatch) -> None:
    """No ImageNet box where no weights exist (it used to fail with "put the file in
    workspace/weights"); width multiplier and stochastic depth only where they apply."""
    from h2a.models import model_info

    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    at = open_page("app_pages/training.py")
    assert at.selectbox(key="boneage_arch").value == "efficientnet_lite0"
    keys = {w.key for w in at.checkbox}
    assert ("boneage_pretrained" in keys) == model_info("efficientnet_lite0").pretrained_available
    assert "boneage_pretrained" in keys  # Lite0's weights ship with the bundled package
    numbers = {w.key for w in at.number_input}
    assert "boneage_drop_path" in numbers and "boneage_width_mult" not in numbers
    assert at.number_input(key="boneage_lr").label == "Learning rate"  # label from the declaration

    at.selectbox(key="boneage_arch").set_value("tiny_cnn").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "boneage_pretrained" not in {w.key for w in at.checkbox}
    assert any("No ImageNet weights for tiny_cnn" in c.value for c in at.caption)
    numbers = {w.key for w in at.number_input}
    assert "boneage_width_mult" in numbers and "boneage_drop_path" not in numbers


def test_evaluation_page_on_a_finished_run(tiny_run: Path, demo_dir, monkeypatch) -> None:
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    at = open_page("app_pages/evaluation.py")
    assert not at.error, [e.value for e in at.error]
    settle(at.multiselect(key="eval_runs").set_value(["tiny-boneage"]).run())  # evaluated in the background
    metrics = at.dataframe[0].value
    assert metrics.loc[0, "run"] == "tiny-boneage" and metrics.loc[0, "MAE (mo)"] > 0
    assert len(at.get("plotly_chart")) >= 4  # scatter, Bland-Altman, by sex, by age
    assert len(at.get("image")) >= 2  # worst cases and CAM overlays
    settle(at.radio(key="eval_source").set_value("active").run())
    assert at.dataframe[0].value.loc[0, "n"] == 240
