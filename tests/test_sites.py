"""Site profiles (``h2a adapt``): a planted shift is recovered, profiles travel with the run,
few images are refused, and predict / evaluate apply and name the site."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from h2a.inference.evaluate import evaluate
from h2a.inference.site_profile import SiteError, list_sites, read_site
from h2a.inference.sites import MIN_LABELLED, fit_site
from h2a.predict.predictor import Predictor
from tests.conftest import run_cli


def _shifted_site(demo: Path, out: Path, n: int, gamma: float = 1.0, labels: bool = True, scale: int = 1) -> Path:
    """The first ``n`` labelled demo images as another 'site': gamma applied (a planted
    acquisition shift), optionally upscaled, with or without the label CSV."""
    csv = next(demo.glob("boneage-training-dataset.csv"))
    df = pd.read_csv(csv).head(n)
    img_dir = out / "boneage-training-dataset"
    img_dir.mkdir(parents=True, exist_ok=True)
    if labels:
        df.to_csv(out / csv.name, index=False)
    for i in df.iloc[:, 0]:
        im = cv2.imread(str(next(demo.rglob(f"{i}.png"))), cv2.IMREAD_GRAYSCALE)
        im = np.clip(255 * (im / 255.0) ** gamma, 0, 255).astype(np.uint8)
        if scale > 1:
            im = cv2.resize(im, (im.shape[1] * scale, im.shape[0] * scale), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(img_dir / f"{i}.png"), im)
    return out


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the shared tiny run: the sites fitted here must not show on other tests' pages."""
    out = tmp_path_factory.mktemp("site-run") / "tiny-boneage-sites"
    shutil.copytree(tiny_run, out)
    return out


@pytest.fixture(scope="module")
def sites(run, demo_dir, tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("sites")
    plain = fit_site(run, _shifted_site(demo_dir, root / "plain", 160), "plain-site")
    shifted = fit_site(run, _shifted_site(demo_dir, root / "dark", 160, gamma=0.4), "dark-site")
    return {"root": root, "plain": plain, "dark": shifted}


def test_planted_shift_is_recovered(sites):
    """gamma 0.4 on every image makes the model read the children much older; the site's
    kept parts remove most of that planted bias (cross-validated, folds by child)."""
    before_plain = sites["plain"]["report"]["before"]["bias"]
    before, after = sites["dark"]["report"]["before"]["bias"], sites["dark"]["report"]["after"]["bias"]
    planted = before - before_plain
    assert planted > 10, f"the planted shift should bias the model (bias {before:+.1f} vs {before_plain:+.1f})"
    assert abs(after - before_plain) < 0.5 * planted, (before_plain, before, after)
    assert sites["dark"]["report"]["after"]["mae"] < sites["dark"]["report"]["before"]["mae"]
    kept = [p for p, v in sites["dark"]["parts"].items() if v["kept"]]
    assert kept, "some part must be kept when it helps this much"
    for part, v in sites["dark"]["parts"].items():  # every part says why it is kept or not
        assert "cross-validated" in v["why"]


def test_parts_that_do_not_help_are_left_out(sites):
    """The kept parts are the combination with the lowest cross-validated MAE, so a part that
    does not beat going without it is never kept."""
    for info in (sites["plain"], sites["dark"]):
        v = info["report"]["variants"]
        combos = [k for k in v if k == "none" or k == "bn" or k.startswith(("correction", "bn + correction"))]
        best = min(v[k]["mae"] for k in combos)
        kept = info["parts"]
        form = kept["correction"]["model"]["form"]
        name = {(False, False): "none", (True, False): "bn", (False, True): f"correction ({form})",
                (True, True): f"bn + correction ({form})"}[(kept["bn"]["kept"], kept["correction"]["kept"])]
        assert v[name]["mae"] == best
        assert info["report"]["after"]["mae"] == v[name]["mae"]


def test_site_travels_with_the_run(sites, run, tmp_path):
    """A run folder copied elsewhere keeps its sites and predicts the same with them."""
    image = next((sites["root"] / "dark" / "boneage-training-dataset").glob("*.png"))
    copy = tmp_path / "moved-run"
    shutil.copytree(run, copy)
    assert "dark-site" in list_sites(copy)
    a = Predictor(run, site="dark-site", ood=False).predict_image(str(image), sex="female", cam=False)
    b = Predictor(copy, site="dark-site", ood=False).predict_image(str(image), sex="female", cam=False)
    plain = Predictor(run, site="none", ood=False).predict_image(str(image), sex="female", cam=False)
    assert a.ok and b.ok and a.site == b.site == "dark-site"
    assert a.bone_age_months == pytest.approx(b.bone_age_months, abs=1e-6)
    assert a.interval_months == pytest.approx(b.interval_months, abs=1e-6)
    assert plain.site is None and abs(plain.bone_age_months - a.bone_age_months) > 0.5


def test_too_few_images_are_refused(run, demo_dir, tmp_path):
    few = _shifted_site(demo_dir, tmp_path / "few", MIN_LABELLED - 5)
    with pytest.raises(SiteError, match=f"too few.*at least {MIN_LABELLED}"):
        fit_site(run, few, "few")
    assert "few" not in list_sites(run)
    r = run_cli("adapt", "--model", str(run), "--data", str(few), "--name", "few")
    error = [line for line in r.stderr.splitlines() if "error" in line]
    assert r.returncode == 2 and len(error) == 1 and "too few" in error[0], r.stderr  # one line, no traceback
    assert "Traceback" not in r.stderr


def test_unlabelled_folder_adapts_alone(run, demo_dir, tmp_path):
    """A folder of images without a label CSV: only the statistics, reported as not judged."""
    folder = _shifted_site(demo_dir, tmp_path / "unlabelled", 40, gamma=0.4, labels=False)
    info = fit_site(run, folder, "unlabelled-dark")
    assert info["fitted_on"]["labelled"] is False
    assert [p for p, v in info["parts"].items() if v["kept"]] == ["bn"]
    assert "not judged" in info["report"]["how"] or info["report"]["unlabelled"]
    # brighter-looking images read older; the statistics pull the estimates back down
    assert info["report"]["mean_shift_months"] < 0
    assert read_site(run, "unlabelled-dark").bn_stats


def test_evaluate_and_cli_name_the_site(sites, run):
    data = sites["root"] / "dark"
    plain = evaluate(run, data).metrics
    adapted = evaluate(run, data, site="dark-site").metrics
    assert plain["site"] is None and adapted["site"] == "dark-site"
    assert abs(adapted["bias"]) < abs(plain["bias"])  # in-sample here: the cross-validated figure is the report's
    image = next((data / "boneage-training-dataset").glob("*.png"))
    r = run_cli("predict", str(image), "--model", str(run), "--sex", "male", "--site", "dark-site", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["site"] == "dark-site" and out["site_reason"] and out["site_parts"]
    r = run_cli("predict", str(image), "--model", str(run), "--sex", "male", "--site", "nowhere")
    assert r.returncode == 2 and "no site 'nowhere'" in r.stderr


def test_large_uploads_get_the_default_site(run, demo_dir, tmp_path):
    """A site fitted with --default-for-large applies to much larger images only, and says why."""
    big = _shifted_site(demo_dir, tmp_path / "big", 40, scale=8)
    info = fit_site(run, big, "big-site", default_for_large=True)
    side = info["auto"]["min_side_px"]
    pred = Predictor(run, ood=False)
    large = next((big / "boneage-training-dataset").glob("*.png"))
    small = next(demo_dir.rglob("*.png"))
    r_large = pred.predict_image(str(large), sex="female", cam=False)
    r_small = pred.predict_image(str(small), sex="female", cam=False)
    assert max(r_large.original_size) >= side > max(r_small.original_size)
    assert r_large.site == "big-site" and "larger than the training images" in r_large.site_reason
    assert r_small.site is None and "like the training images" in r_small.site_reason
