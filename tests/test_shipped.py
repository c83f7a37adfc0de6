"""Shipped models: a run shipped as safetensors answers like the run, and on a fresh clone
(no run of the user's) the committed models in ``models/`` answer a real radiograph."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from h2a.run import SHIPPED_WEIGHTS, best_run, list_runs
from h2a.predict.shipping import MAX_FILE_MB, ship_run
from h2a.predict.predictor import Predictor
from tests.conftest import REPO, run_cli

SHIPPED = REPO / "models"
BONEAGE, SEX = "h2a-boneage", "h2a-sex"
# what a shipped folder may hold (the before-stop check allows exactly these)
ALLOWED = {"README.md", "config.json", "metadata.json", "calibration.json", "coverage.json", "holdout.json",
           "robustness.json", "heatmap.json", "model.safetensors", "ood.safetensors",
           "sites/fullres/site.json", "sites/fullres/bn_stats.safetensors"}


@pytest.fixture()
def shipped_only(monkeypatch, tmp_path):
    """A fresh clone: the shipped models and no run of the user's."""
    monkeypatch.setenv("H2A_SHIPPED_DIR", str(SHIPPED))
    monkeypatch.setenv("H2A_MODELS_DIR", str(tmp_path / "no-runs-yet"))


def test_ship_run_answers_like_the_run(tiny_run, tmp_path, one_torch_thread):
    out = tmp_path / "shipped" / "tiny"
    info = ship_run(tiny_run, out)
    assert (out / SHIPPED_WEIGHTS).is_file() and not (out / "model.pt").exists()
    check = info["precision_check"]
    assert info["precision"].startswith("float16" if check["max_abs_change"] < check["tolerance"] else "float32")
    card = (out / "README.md").read_text()
    for section in ("## Data and split", "## Held-out figures", "## Intended use and limits", "Research use only"):
        assert section in card
    image = next(Path(json.loads((tiny_run / "metadata.json").read_text())["dataset"]["path"]).rglob("*.png"))
    a = Predictor(tiny_run, ood=False, site="none").predict_image(str(image), sex="male", cam=False)
    b = Predictor(out, ood=False, site="none").predict_image(str(image), sex="male", cam=False)
    assert abs(a.bone_age_months - b.bone_age_months) <= check["tolerance"] + 1e-6
    ref = Predictor(out).ood_reference(Predictor(out).runs[0])  # ood.safetensors, not rebuilt
    assert ref is not None and (out / "ood.safetensors").is_file() and not (out / "ood.npz").exists()


def test_a_synthetic_run_never_outranks_a_real_one(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "shipped-real"
    ship_run(tiny_run, out / "real-one", card=False)
    meta = json.loads((out / "real-one" / "metadata.json").read_text())
    meta["dataset"]["synthetic"] = False
    meta["metrics"]["mae"] = 1e6  # far worse than the demo run, and still preferred: it saw real images
    (out / "real-one" / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setenv("H2A_SHIPPED_DIR", str(out))
    names = [r.name for r in list_runs(task="boneage")]
    assert "real-one" in names and names.index("real-one") > names.index(tiny_run.name)  # the user's runs first
    assert best_run("boneage").name == "real-one"


def test_shipped_files_are_small_and_expected():
    for name in (BONEAGE, SEX):
        folder = SHIPPED / name
        assert (folder / SHIPPED_WEIGHTS).is_file(), f"models/{name} is not committed"
        files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        assert files <= ALLOWED, files - ALLOWED
        for p in folder.rglob("*.safetensors"):
            assert p.stat().st_size <= MAX_FILE_MB * 2 ** 20, p


def test_fresh_clone_predicts_a_real_radiograph(shipped_only, fullres_dir):
    """`h2a predict hand.png --sex female --json` with nothing trained: the shipped model answers,
    and a full-resolution upload gets the fullres site, saying why."""
    image = sorted((fullres_dir / "boneage-training-dataset").glob("*.png"))[0]
    r = run_cli("predict", str(image), "--sex", "female", "--json",
                env={"H2A_SHIPPED_DIR": os.environ["H2A_SHIPPED_DIR"], "H2A_MODELS_DIR": os.environ["H2A_MODELS_DIR"]})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model_run"] == BONEAGE
    assert 0 < out["bone_age_months"] < 240
    assert out["site"] == "fullres" and "larger than the training images" in out["site_reason"]
    lo, hi = out["interval_months"]
    assert lo < out["bone_age_months"] < hi


def test_shipped_runs_are_listed_and_marked(shipped_only):
    runs = {r.name: r for r in list_runs()}
    assert runs[BONEAGE].shipped and runs[SEX].shipped
    assert runs[BONEAGE].task == "boneage" and runs[SEX].task == "sex"
    assert best_run("boneage").name == BONEAGE and best_run("sex").name == SEX


def test_model_cards_give_the_measured_figures():
    meta = json.loads((SHIPPED / BONEAGE / "metadata.json").read_text())
    held = json.loads((SHIPPED / BONEAGE / "holdout.json").read_text())
    card = (SHIPPED / BONEAGE / "README.md").read_text()
    assert f"MAE {held['mae']:.2f} months" in card and "standard error" in card
    assert "Site `fullres`" in card and meta["shipped"]["precision"] in card
    sex = (SHIPPED / SEX / "README.md").read_text()
    sex_held = json.loads((SHIPPED / SEX / "holdout.json").read_text())
    assert f"AUC {sex_held['auc']:.3f}" in sex and "calibration error" in sex
    assert np.isfinite(sex_held["ece"])


def test_card_tells_both_stages_of_a_warm_started_run(tmp_path):
    """A release trained in two stages (a warm start at a larger input) says so on its card: the
    source's epochs, input size and time come from metadata.json, not from the source folder."""
    from h2a.inference.model_card import card_text

    meta = json.loads((SHIPPED / SEX / "metadata.json").read_text())
    first = {**meta, "epochs_run": 18, "preprocess": {**meta["preprocess"], "size": 128}, "train_seconds": 2520.0,
             "warm_start": None}
    meta.update(epochs_run=4, best_epoch=4, train_seconds=840.0, preprocess={**meta["preprocess"], "size": 160},
                warm_start={"from": "models/stage-one", "tensors": 300, "of": 300,
                            "source": {"name": "stage-one", "epochs_run": 18, "image_size": 128,
                                       "train_seconds": 2520.0, "warm_start": None}})
    run = tmp_path / "two-stage"
    run.mkdir()
    (run / "metadata.json").write_text(json.dumps(meta))
    card = card_text(run)
    assert "18 epochs at 128 px (42 min), then 4 epochs at 160 px warm-started from it (14 min)" in card
    assert "best epoch 4 of the last stage" in card
    assert "--image-size 128 --epochs 18 then --image-size 160 --epochs 4" in card
    (run / "metadata.json").write_text(json.dumps(first))  # one stage: no warm-start wording
    card = card_text(run)
    assert "18 epochs at 128 px (42 min), best epoch" in card and "warm-started" not in card


def test_a_shipped_run_reads_as_finished_with_its_history():
    """A shipped folder has metadata.json and no progress.json: its status, epochs and curves
    come from the metadata (the pages showed 'unknown, epoch 0/1' before)."""
    from h2a.run import run_status

    meta = json.loads((SHIPPED / SEX / "metadata.json").read_text())
    status = run_status(SHIPPED / SEX)
    assert status["status"] == "finished"
    assert status["epoch"] == status["epochs"] == meta["epochs_run"] == len(status["history"]) >= 1
    assert "val_auc" in status["history"][-1]


def test_training_page_opens_the_shipped_model_on_a_fresh_clone(shipped_only, monkeypatch):
    """The run picker of the task pages resolves a shipped model's own folder (not the models
    folder, where it is not) and marks it."""
    from streamlit.testing.v1 import AppTest

    from h2a.app.plain import plain

    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    at.run()
    at.switch_page("app_pages/training.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    pick = at.selectbox(key="boneage_pick")
    assert pick.value == BONEAGE and f"{BONEAGE} · shipped with H2A" in pick.options
    text = "\n".join(m.value for m in at.markdown)
    assert f"**{plain(BONEAGE)}**" in text and "finished" in text and "unknown" not in text
    epochs = json.loads((SHIPPED / BONEAGE / "metadata.json").read_text())["epochs_run"]
    assert any(f"epoch {epochs}/{epochs}" in p.proto.text for p in at.get("progress"))
    assert at.get("plotly_chart")  # the training curves, from the metadata's history
