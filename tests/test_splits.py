"""Which images train: --exclude-ids removes ids from training only, splits otherwise unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from h2a.data.datasets import load_dataset
from h2a.engine.config import TrainConfig, TrainingError
from h2a.engine.splits import make_splits, read_id_list


def _cfg(data: Path, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), out="unused", holdout_fraction=0.1, val_fraction=0.2, **kw)


def test_excluded_ids_leave_training_and_nothing_else_moves(demo_dir: Path, tmp_path: Path) -> None:
    ds = load_dataset(demo_dir)
    base = make_splits(ds, _cfg(demo_dir))
    # Ids from every split, plus one the dataset does not have.
    chosen = base["train"][:5] + base["validation"][:2] + base["holdout"][:2] + ["no-such-id"]
    (tmp_path / "ids.txt").write_text("\n".join(chosen) + "\n")
    got = make_splits(ds, _cfg(demo_dir, exclude_ids=str(tmp_path / "ids.txt")))
    assert got["validation"] == base["validation"] and got["holdout"] == base["holdout"]
    assert got["train"] == [i for i in base["train"] if i not in set(chosen)]
    assert len(got["train"]) == len(base["train"]) - 5


def test_id_list_from_csv_folder_and_text(demo_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ids.csv").write_text("\ufeffid,boneage\n12,100\n 13 ,50\n")
    assert read_id_list(tmp_path / "ids.csv") == {"12", "13"}
    assert read_id_list(demo_dir) == set(load_dataset(demo_dir).meta["id"].astype(str))
    (tmp_path / "bad.csv").write_text("name,age\nx,1\n")
    with pytest.raises(TrainingError, match="needs an 'id' column"):
        read_id_list(tmp_path / "bad.csv")
    with pytest.raises(TrainingError, match="no such file"):
        read_id_list(tmp_path / "missing.txt")


def test_split_seed_holds_the_same_images_out_whatever_the_seed(demo_dir: Path) -> None:
    """Two seeds of a study arm are compared on the same held-out images only if the split
    does not follow --seed."""
    ds = load_dataset(demo_dir)
    a = make_splits(ds, _cfg(demo_dir, seed=1, split_seed=0))
    b = make_splits(ds, _cfg(demo_dir, seed=2, split_seed=0))
    assert a == b == make_splits(ds, _cfg(demo_dir, seed=0))
    assert make_splits(ds, _cfg(demo_dir, seed=1))["holdout"] != a["holdout"]  # the default still follows --seed
