"""The clusters study on the demo data: ImageNet Lite0 and a bone-age run's embeddings,
clustered and scored against sex and age bands with the existing core."""

from __future__ import annotations

import numpy as np
import pytest

from h2a.studies.clusters import age_band_scores, clusters_study


def test_age_band_scores_use_24_month_bands() -> None:
    ages = np.array([3, 10, 20, 30, 40, 47, 50, 60, 70, np.nan])  # bands 0-2 y, 2-4 y, 4-6 y (+ one unknown)
    perfect = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])
    got = age_band_scores(perfect, ages)
    assert got["n_age_known"] == 9 and got["n_age_bands"] == 3
    assert got["ari_age_band"] == pytest.approx(1.0) and got["nmi_age_band"] == pytest.approx(1.0)
    shuffled = age_band_scores(np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]), ages)
    assert shuffled["ari_age_band"] < 0.1
    assert age_band_scores([0, 1], [5.0, 6.0])["ari_age_band"] is None  # one band: nothing to score


def test_clusters_study_on_the_demo_data(demo_dir, tiny_run, one_torch_thread) -> None:
    sources = {"imagenet": None, "boneage": str(tiny_run), "sex": "no-such-run"}
    result = clusters_study(demo_dir, sources, k=2, seed=0, images="all")
    assert result["images"] == "all images" and result["k"] == 2 and result["seed"] == 0 and result["band_months"] == 24
    rows = result["rows"]
    by = {(r["source"], r["space"]): r for r in rows}
    assert set(by) == {("imagenet", "umap"), ("imagenet", "full"), ("boneage", "umap"), ("boneage", "full"),
                       ("sex", None)}
    n = result["n_images"]
    from h2a.data.datasets import load_dataset

    assert n == len(load_dataset(demo_dir).with_images())  # every demo image (all decodable)
    for key in [k for k in by if k[1] is not None]:
        r = by[key]
        assert r["n"] == n and r["k"] == 2 and r["error"] is None
        for metric in ("ari_sex", "nmi_sex", "ari_age_band", "nmi_age_band"):
            assert r[metric] is not None and -0.5 <= r[metric] <= 1.0, (key, metric, r[metric])
    assert by[("imagenet", "umap")]["embedding"] == "pretrained:efficientnet_lite0"
    assert by[("boneage", "full")]["embedding"] == f"run:{tiny_run.name}"
    # the bone-age run's embedding is organised by age: its clusters follow age bands more than
    # the sexes (ARI vs sex near chance on the synthetic hands)
    b = by[("boneage", "full")]
    assert b["nmi_age_band"] > b["nmi_sex"]
    # a source that cannot be used is one row saying why; the others still ran
    assert "no-such-run" in by[("sex", None)]["error"] and by[("sex", None)]["ari_sex"] is None



def test_by_default_only_images_every_run_held_out_are_clustered(demo_dir, tmp_path) -> None:
    """A run's embedding of its own training images is flattered: the default clusters the
    images no run saw (a run folder's metadata.json lists its held-out ids)."""
    import json

    from h2a.data.datasets import load_dataset
    from h2a.studies.clusters import _images

    ds = load_dataset(demo_dir)
    ids = ds.meta["id"].astype(str).tolist()
    runs = {}
    for name, held in (("a", ids[:60]), ("b", ids[30:90])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metadata.json").write_text(json.dumps({"splits": {"holdout": held}}))
        runs[name] = str(tmp_path / name)
    subset, how = _images(ds, {"imagenet": None, **runs}, "holdout")
    assert how == "images every run held out"
    assert sorted(subset.meta["id"].astype(str)) == sorted(ids[30:60])
    assert subset.fingerprint != ds.fingerprint  # its own embedding cache key
    assert _images(ds, runs, "all")[0] is ds
    assert _images(ds, {"imagenet": None}, "holdout")[1] == "all images (no run source)"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metadata.json").write_text(json.dumps({"splits": {"holdout": []}}))
    assert _images(ds, {**runs, "c": str(tmp_path / "c")}, "holdout")[1].startswith("all images (a run kept no")


def test_clusters_study_rejects_bad_input(demo_dir) -> None:
    with pytest.raises(ValueError, match="source"):
        clusters_study(demo_dir, {})
    with pytest.raises(ValueError, match="k must"):
        clusters_study(demo_dir, {"imagenet": None}, k=1)
