"""Clustering scores on constructed cases, the estimator's conventions, the UMAP disk
cache, and the ``cluster`` command's JSON on the demo data."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score

from h2a.analysis.clustering import (
    FOLLOWS_FROM,
    STRENGTH_LEVELS,
    EmbeddingClusterer,
    axis_correlations,
    cluster_scores,
    cluster_verdict,
    purity,
    sweep_k,
)


def _blobs(n_per: int = 100, centers=((0.0,) * 8, (12.0,) * 8), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(c, 1.0, size=(n_per, len(c))) for c in centers]).astype(np.float32)
    labels = np.repeat(np.arange(len(centers)), n_per)
    return X, labels


# ---------------------------------------------------------------- scores on hand-made labels

def test_scores_of_a_perfect_and_a_hand_checked_clustering() -> None:
    male = np.array([1, 1, 1, 0, 0, 0], dtype=float)
    age = np.array([10, 20, 30, 40, 50, 60], dtype=float)
    s = cluster_scores([7, 7, 7, 3, 3, 3], male, age)
    assert s["ari_sex"] == pytest.approx(1.0) and s["nmi_sex"] == pytest.approx(1.0)
    assert s["purity_sex"] == 1.0 and s["purity_baseline"] == 0.5
    by = {c["cluster"]: c for c in s["clusters"]}
    assert by[7]["size"] == 3 and by[7]["share_male"] == 1.0 and by[7]["boneage_mean"] == 20.0
    assert (by[3]["boneage_min"], by[3]["boneage_max"]) == (40.0, 60.0)
    # between-cluster variance / total: means 20 and 50 around 35 -> 6*225 / 1750
    assert s["boneage_eta2"] == pytest.approx(6 * 225 / 1750)

    # one mixed cluster: purity counts majorities (4 of 6), unknown sex is left out of sex scores
    s = cluster_scores([0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, None], age)
    assert s["n"] == 6 and s["n_sex_known"] == 5
    assert s["purity_sex"] == pytest.approx(4 / 5)
    assert {c["cluster"]: c["share_male"] for c in s["clusters"]}[1] == 0.0
    assert purity([0, 0, 1, 1], [0, 1, 0, 1]) == 0.5


def test_random_labels_score_near_zero() -> None:
    rng = np.random.default_rng(1)
    male = rng.random(4000) < 0.54
    labels = rng.integers(0, 2, 4000)
    s = cluster_scores(labels, male.astype(float), rng.uniform(0, 228, 4000))
    assert abs(s["ari_sex"]) < 0.01 and s["nmi_sex"] < 0.01
    assert s["purity_sex"] == pytest.approx(s["purity_baseline"], abs=0.02)
    assert s["boneage_eta2"] < 0.01


def test_sweep_k_and_axis_correlations() -> None:
    X, _ = _blobs(60, centers=((0, 0), (10, 0), (0, 10)))
    sw = sweep_k(X, range(2, 7))
    assert sw["k"].tolist() == [2, 3, 4, 5, 6]
    assert (np.diff(sw["inertia"]) < 0).all()
    assert sw.loc[sw["silhouette"].idxmax(), "k"] == 3
    coords = np.c_[np.arange(50.0), -np.arange(50.0) ** 3]
    assert axis_correlations(coords, np.arange(50.0) * 2 + 1) == pytest.approx([1.0, -1.0])
    assert axis_correlations(coords, np.full(50, 3.0)) == [None, None]


def test_estimator_conventions() -> None:
    est = EmbeddingClusterer(3, pca=10, n_neighbors=5)
    assert est.get_params()["k"] == 3 and est.get_params()["pca"] == 10
    assert not hasattr(est, "labels_")  # nothing learned in __init__
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(ValueError, match="k must be"):
        EmbeddingClusterer(1).fit(np.zeros((10, 4)))
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingClusterer(2).fit(np.full((10, 4), np.nan))


# ---------------------------------------------------------------- UMAP + k-means end to end

def test_separated_blobs_labelled_by_sex_give_ari_one_and_the_map_is_cached(workspace) -> None:
    X, blob = _blobs(100)
    male = blob.astype(float)  # blob 1 = boys
    age = np.where(blob == 1, 150.0, 60.0) + np.random.default_rng(2).normal(0, 5, len(blob))
    est = EmbeddingClusterer(2, pca=5, n_neighbors=10, random_state=0)
    assert est.fit(X, cache_key="blobs-test") is est  # fit returns self
    s = est.scores(male, age)
    assert est.embedding_.shape == (200, 2) and est.features_.shape == (200, 5)
    for sc in (s, s["full"]):
        assert sc["ari_sex"] == pytest.approx(1.0, abs=1e-6) and sc["purity_sex"] == 1.0
        assert sc["silhouette"] > 0.5
        assert sc["boneage_eta2"] > 0.9
    assert s["full"]["space"] == "full embedding (5-d after PCA)"
    assert adjusted_rand_score(est.labels_, est.labels_full_) == pytest.approx(1.0)
    assert max(abs(r) for r in s["umap_spearman_boneage"]) > 0.5  # the map separates the blobs (and ages)
    assert s["umap_from_cache"] is False

    again = EmbeddingClusterer(2, pca=5, n_neighbors=10, random_state=0).fit(X, cache_key="blobs-test")
    assert again.umap_from_cache_ is True
    np.testing.assert_array_equal(again.embedding_, est.embedding_)
    other = EmbeddingClusterer(2, pca=5, n_neighbors=12, random_state=0).fit(X, cache_key="blobs-test")
    assert other.umap_from_cache_ is False  # another parameter, another map
    frame = est.frame([str(i) for i in range(200)], male, age)
    assert list(frame.columns[:5]) == ["id", "umap_x", "umap_y", "cluster", "cluster_full"]
    assert set(frame["sex"]) == {"male", "female"}


def _cluster_cli(argv: list[str]) -> int:
    """The cluster command through its own parser (also works before it is wired into h2a.cli)."""
    from h2a.cli.cluster import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cluster", *argv])
    return args.func(args)


def test_cluster_command_json_and_csv(demo_dir, tmp_path, capsys) -> None:
    out_csv = tmp_path / "clusters.csv"
    argv = ["--data", str(demo_dir), "--k", "2", "--image-size", "64", "--umap-neighbors", "10", "--seed", "1",
            "--out", str(out_csv), "--json", "--sweep", "2-4"]
    assert _cluster_cli(argv) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("n", "k", "ari_sex", "nmi_sex", "purity_sex", "silhouette", "clusters", "full", "boneage_eta2",
                "umap_spearman_boneage", "embedding", "sweep_full", "verdict"):
        assert key in out, key
    from h2a.data.datasets import load_dataset

    assert out["k"] == 2 and out["n"] == len(load_dataset(demo_dir).with_images())
    assert out["synthetic"] is True and out["embedding"]["source"] == "pretrained:efficientnet_lite0"
    assert -1 <= out["ari_sex"] <= 1 and 0 <= out["nmi_sex"] <= 1 and 0.5 <= out["purity_sex"] <= 1
    assert sum(c["size"] for c in out["clusters"]) == out["n"] == sum(c["size"] for c in out["full"]["clusters"])
    for c in out["clusters"] + out["full"]["clusters"]:
        assert 0 <= c["share_male"] <= 1 and 0 < c["boneage_mean"] < 240
    assert [r["k"] for r in out["sweep_full"]] == [2, 3, 4]
    assert out["verdict"]["follows"] in ("sex", "age", "both", "neither") and out["verdict"]["reason"]
    import pandas as pd

    frame = pd.read_csv(out_csv)
    assert len(frame) == out["n"] and {"id", "umap_x", "umap_y", "cluster", "cluster_full", "sex"} <= set(frame)

    # the same command again: embeddings and the UMAP map come from disk
    assert _cluster_cli(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["embedding"]["from_cache"] is True and again["umap_from_cache"] is True
    assert again["ari_sex"] == out["ari_sex"]

    # k's bound is ClusterConfig's declaration: the parser refuses it, naming the flag
    with pytest.raises(SystemExit) as info:
        _cluster_cli(["--data", str(demo_dir), "--k", "1", "--image-size", "64"])
    assert info.value.code == 2 and "argument --k: must be an integer >= 2" in capsys.readouterr().err


def test_cluster_is_wired_into_python_m_h2a(demo_dir, capsys) -> None:
    from h2a.cli import build_parser, main

    assert "cluster" in build_parser().format_help()
    # in-process (a subprocess would pay numba's UMAP compilation again)
    assert main(["cluster", "--data", str(demo_dir), "--image-size", "64", "--umap-neighbors", "10",
                 "--seed", "1", "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 3 and len(out["clusters"]) == 3 and len(out["full"]["clusters"]) == 3
    assert out["verdict"] == cluster_verdict(out)  # the core's verdict, reported as computed
    assert main(["cluster", "--data", str(demo_dir), "--model", "no-such-run"]) == 2
    err = capsys.readouterr().err
    assert "no run" in err and "Traceback" not in err


# ---------------------------------------------------------------- verdict

def _scores(labels, male, age, labels_full=None) -> dict:
    """Scores shaped like EmbeddingClusterer.scores: the map's at the top, the full space's in 'full'."""
    out = cluster_scores(labels, male, age)
    out["full"] = cluster_scores(labels if labels_full is None else labels_full, male, age)
    return out


def test_verdict_clusters_that_split_the_sexes_follow_sex() -> None:
    rng = np.random.default_rng(0)
    male = np.repeat([0, 1], 200)
    age = rng.uniform(0, 228, 400)  # unrelated to the clusters
    v = cluster_verdict(_scores(male.copy(), male, age))
    assert v["follows"] == "sex" and v["sex"]["ari"] == pytest.approx(1.0) and v["sex"]["strength"] == "largely"
    assert v["age"]["strength"] == "hardly at all" and v["age"]["follows"] is False
    assert v["reason"].startswith("The clusters follow sex") and "ARI 1.00" in v["reason"]
    assert v["thresholds"]["follows_from"] == FOLLOWS_FROM
    json.dumps(v)


def test_verdict_random_clusters_follow_neither() -> None:
    rng = np.random.default_rng(1)
    male = rng.integers(0, 2, 1000)
    age = rng.uniform(0, 228, 1000)
    v = cluster_verdict(_scores(rng.integers(0, 2, 1000), male, age, rng.integers(0, 2, 1000)))
    assert v["follows"] == "neither" and v["sex"]["strength"] == v["age"]["strength"] == "hardly at all"
    assert v["reason"].startswith("The clusters follow neither")


def test_verdict_age_split_follows_age_and_both_and_unknown() -> None:
    rng = np.random.default_rng(2)
    age = rng.uniform(0, 228, 600)
    male = rng.integers(0, 2, 600)
    young_old = (age > np.median(age)).astype(int)  # uniform ages cut at the median: eta2 = 0.75
    v = cluster_verdict(_scores(young_old, male, age))
    assert v["follows"] == "age" and v["age"]["eta2"] == pytest.approx(0.75, abs=0.03)
    assert v["age"]["strength"] == "largely"
    # sex on the map, age on the full embedding: both, each figure from where it is found
    both = cluster_verdict(_scores(male.copy(), male, age, labels_full=young_old))
    assert both["follows"] == "both" and both["sex"]["space"] == "map" and both["age"]["space"] == "full embedding"
    unknown = cluster_verdict(_scores(young_old, [np.nan] * 600, [np.nan] * 600))
    assert unknown["follows"] == "unknown" and unknown["sex"]["ari"] is None


def test_verdict_thresholds_are_the_band_edges() -> None:
    bounds = [b for b, _ in STRENGTH_LEVELS[:-1]]
    assert bounds == sorted(bounds) and FOLLOWS_FROM in bounds
    for ari, label in ((0.0, "hardly at all"), (0.05, "a little"), (0.2, "partly"), (0.5, "largely")):
        v = cluster_verdict({"k": 2, "ari_sex": ari, "boneage_eta2": None})
        assert v["sex"]["strength"] == label and v["follows"] == ("sex" if ari >= FOLLOWS_FROM else "neither")
