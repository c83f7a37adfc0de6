"""The clustering settings, declared once: ``ClusterConfig``.

k, PCA, the UMAP neighbours and minimum distance, the metric and the seed used to be
written five times (``h2a cluster``, ``h2a jobs start``, the background job, the
estimator, the Clusters page), each copy with its own default, bound and words. Here each
is a field that carries its declaration (``h2a.options.option``); the CLI flags, the page
widgets, the job's params, the estimator's defaults and the cluster study are built from
it, and the per-field checks come from it too.

Light on purpose (the standard library and ``h2a.options``): the CLI imports it to build
its parser without loading scikit-learn or torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from h2a.options import coerce_numbers, declared_kwargs, option, problems

__all__ = ["FOLLOWS_FROM", "METRICS", "PRETRAINED_ARCH", "PRETRAINED_PREPROCESS", "ClusterConfig"]

METRICS = ("euclidean", "cosine", "manhattan", "correlation")
# What a "pretrained" embedding is, unless told otherwise: the ImageNet backbone, at 128 px
# (a CPU embeds the RSNA set in minutes; a trained run always embeds with its own settings).
PRETRAINED_ARCH = "efficientnet_lite0"
FOLLOWS_FROM = 0.2  # agreement (ARI, eta squared) from which the clusters are said to follow the label ("partly" up)
PRETRAINED_PREPROCESS = {"size": 128}


@dataclass(frozen=True)
class ClusterConfig:
    """How embeddings are mapped and clustered: the parameters of ``EmbeddingClusterer``
    that a user chooses (the field order is the page's and the ``--help`` order)."""

    k: int = option(2, minimum=2, group="clustering", label="k", unit="clusters", form={"max": 20},
                    help="number of k-means clusters")
    n_neighbors: int = option(15, minimum=2, cli="--umap-neighbors", metavar="N", group="clustering",
                              label="UMAP neighbours", form={"max": 200},
                              help="UMAP neighbours: small values keep local detail, large ones the overall shape")
    min_dist: float = option(0.1, minimum=0.0, maximum=1.0, cli="--umap-min-dist", metavar="D", group="clustering",
                             label="UMAP min distance", form={"max": 0.99, "step": 0.05},
                             help="how tightly UMAP packs neighbouring points on the map (at most its spread, 1)")
    metric: str = option("euclidean", choices=METRICS, group="clustering", label="Metric",
                         help="the distance UMAP measures between (standardised, PCA-reduced) embeddings")
    pca: int = option(50, minimum=0, metavar="N", group="clustering", label="PCA components", unit="0 = none",
                      form={"max": 512}, help="PCA components before UMAP/k-means (0 = none)")
    seed: int = option(0, minimum=0, group="clustering", label="Seed", form={"max": 10_000},
                       help="random seed of PCA, UMAP and k-means")

    def __post_init__(self) -> None:
        coerce_numbers(self)  # equal settings give equal job keys
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming every bad setting at once (types, choices, ranges)."""
        found = problems(self)
        if found:
            raise ValueError("Invalid clustering settings: " + "; ".join(found))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClusterConfig:
        """From JSON-like data (a job's params, a study's space); other keys are ignored and an
        integral float (JSON's 2.0) is taken for an int field."""
        return cls(**declared_kwargs(cls, d))
