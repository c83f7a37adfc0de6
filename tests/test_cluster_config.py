"""Every clustering setting once: ``ClusterConfig``'s declarations are the one source of the
``h2a cluster`` and ``h2a jobs start`` flags, the Clusters page's widgets, the clusters
job's params, the estimator's defaults and the cluster study's settings."""

from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from h2a.analysis.cluster_config import PRETRAINED_ARCH, ClusterConfig
from h2a.analysis.cluster_jobs import SWEEP_KS, clusters_spec
from h2a.analysis.clustering import EmbeddingClusterer
from h2a.app.option_widgets import label_of
from h2a.cli import build_parser
from h2a.cli.cluster_options import cluster_config_from_args
from h2a.options import declaration, declarations

COMMANDS = (("cluster",), ("jobs", "start"))
ARGV = {("cluster",): ["cluster", "--data", "D"], ("jobs", "start"): ["jobs", "start", "clusters", "--data", "D"]}


def _parser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _actions(path: tuple[str, ...]) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _parser(path)._actions}


def test_every_field_is_declared_with_help_a_type_and_a_valid_default() -> None:
    decl = {d.name: d for d in declarations(ClusterConfig)}
    assert set(decl) == {f.name for f in dataclasses.fields(ClusterConfig)}
    assert {"k", "pca", "n_neighbors", "min_dist", "metric", "seed"} <= set(decl)
    for d in decl.values():
        assert d.opt.help and len(d.opt.help) > 8, d.name
        assert d.type in (int, float, str), (d.name, d.type)
        assert d.check(d.default) is None, d.name
    assert ClusterConfig().to_dict() == {d.name: d.default for d in decl.values()}


@pytest.mark.parametrize("path", COMMANDS)
def test_every_field_is_a_flag_with_its_declared_help_default_and_choices(path) -> None:
    actions = _actions(path)
    for d in declarations(ClusterConfig):
        a = actions[d.name]
        assert d.flag in a.option_strings, (path, d.name)
        assert a.default is None  # "not given": the dataclass keeps the one default
        assert a.help.startswith(d.opt.help) and f"(default: {d.default})" in a.help, (path, d.name, a.help)
        assert a.choices == d.opt.choices, (path, d.name)
    # the historical flag names survive
    flags = {s for a in actions.values() for s in a.option_strings}
    assert {"--k", "--pca", "--umap-neighbors", "--umap-min-dist", "--metric", "--seed", "--arch"} <= flags
    assert actions["arch"].default == PRETRAINED_ARCH


@pytest.mark.parametrize("path", COMMANDS)
def test_flags_map_to_the_config_and_no_flag_gives_the_declared_defaults(path) -> None:
    parser = build_parser()
    assert cluster_config_from_args(parser.parse_args(ARGV[path])) == ClusterConfig()
    args = parser.parse_args([*ARGV[path], "--k", "3", "--umap-neighbors", "10", "--umap-min-dist", "0.3",
                              "--metric", "cosine", "--pca", "0", "--seed", "4"])
    assert cluster_config_from_args(args) == ClusterConfig(k=3, n_neighbors=10, min_dist=0.3, metric="cosine",
                                                           pca=0, seed=4)


@pytest.mark.parametrize("argv, flag", [
    (["--k", "1"], "--k"),
    (["--umap-neighbors", "1"], "--umap-neighbors"),
    (["--umap-min-dist", "-0.1"], "--umap-min-dist"),
    (["--metric", "cityblock"], "--metric"),
    (["--pca", "-1"], "--pca"),
])
def test_bad_values_are_refused_naming_the_flag(argv, flag, capsys) -> None:
    for path in COMMANDS:
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args([*ARGV[path], *argv])
        assert info.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err


def test_config_checks_come_from_the_declarations() -> None:
    with pytest.raises(ValueError, match=r"\bk must") as info:
        ClusterConfig(k=1, metric="x")
    assert "metric" in str(info.value)  # every problem at once
    cfg = ClusterConfig(k=np.int64(3), min_dist=0, seed=np.int32(1))
    assert type(cfg.k) is int and type(cfg.min_dist) is float and type(cfg.seed) is int
    assert ClusterConfig.from_dict({"k": 3.0, "sweep": [2, 3], "source": "x"}) == ClusterConfig(k=3)


def test_the_estimator_and_the_job_take_their_defaults_from_the_config() -> None:
    cfg = ClusterConfig()
    est = EmbeddingClusterer()
    assert est.cluster_config() == cfg
    assert EmbeddingClusterer.from_config(ClusterConfig(k=4, pca=0)).get_params()["k"] == 4
    ds = SimpleNamespace(root="/nowhere", fingerprint="fp")
    spec = clusters_spec(ds, "pretrained", None)
    # the params (and so the keys of jobs already on disk) are those of before ClusterConfig
    assert spec.params == {"source": "pretrained", "arch": PRETRAINED_ARCH, "preprocess": None, "k": 2, "pca": 50,
                           "n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean", "seed": 0,
                           "sweep": list(SWEEP_KS)}
    assert spec.params.items() >= cfg.to_dict().items()
    assert clusters_spec(ds, "pretrained", None, ClusterConfig(k=3)).key == clusters_spec(ds, "pretrained", None,
                                                                                          k=3).key
    with pytest.raises(ValueError, match="k must"):
        clusters_spec(ds, "pretrained", None, k=1)


# ---------------------------------------------------------------- the page

class _AskedJob:
    """Stands in for the clusters job the page asks for: it has no result, so the page stops
    after its form."""

    name = "clusters-test"

    def status(self) -> dict:
        return {"status": "missing"}


def test_the_page_widgets_are_the_config_fields(demo_dir, monkeypatch) -> None:
    """The Clusters page draws one widget per ClusterConfig field, with the declared label,
    help, range and default, and asks for its job with a ClusterConfig (no job is started)."""
    from h2a.app import cluster_ui
    from tests.conftest import open_page

    asked = []
    monkeypatch.setattr(cluster_ui, "clusters_job",
                        lambda ds, source, pp, config, **kw: asked.append(config) or _AskedJob())
    monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    at = open_page("app_pages/clusters.py")
    assert asked and asked[-1] == ClusterConfig()

    widgets = {w.key: w for kind in ("number_input", "selectbox", "select_slider", "slider", "text_input",
                                     "checkbox", "radio") for w in at.get(kind) if w.key and w.key.startswith("cl_")}
    setting_keys = {cluster_ui.setting_key(name) for name in cluster_ui.SETTING_FIELDS}
    assert set(cluster_ui.SETTING_FIELDS) == {d.name for d in declarations(ClusterConfig)}
    assert set(widgets) == setting_keys | {"cl_source", "cl_size"}
    for name in cluster_ui.SETTING_FIELDS:
        d, w = declaration(ClusterConfig, name), widgets[cluster_ui.setting_key(name)]
        assert w.label == label_of(d) and w.help == d.opt.help, name
        assert w.value == d.default, name
        if d.opt.choices:
            assert w.type == "selectbox" and w.options == [str(c) for c in d.opt.choices], name
        else:
            assert w.type == "number_input", name
            assert w.min == d.opt.minimum and w.max == d.opt.form.get("max", d.opt.maximum), name
