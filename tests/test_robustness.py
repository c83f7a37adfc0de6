"""The robustness report: each perturbation does what its name says, the report has a row per
perturbation with finite figures on a real (tiny) run, and ``h2a robustness --json`` works."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest

from h2a.analysis.robustness import (
    BASELINE,
    PERTURBATIONS,
    encode_png,
    perturbation_names,
    robustness_report,
    select_images,
)
from h2a.data.imageio import read_image


def hand_like(h: int = 120, w: int = 90) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.45 + 0.25 * np.sin(xx / 6) * np.cos(yy / 9)
    img[h // 4:, w // 3: w // 3 + 6] = 0.95
    return np.clip(img, 0, 1).astype(np.float32)


def by_name(name: str):
    return next(p for p in PERTURBATIONS if p.name == name)


def test_every_perturbation_keeps_a_valid_image_and_does_something():
    img = hand_like()
    names = perturbation_names()
    assert names[0] == BASELINE and len(names) == len(set(names)) == 14
    for p in PERTURBATIONS:
        out = p.apply(img, 64)
        assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0, p.name
        if p.name == "rotate_90":
            assert out.shape == img.shape[::-1]
        else:
            assert out.shape == img.shape, p.name
        if p.name == BASELINE:
            assert np.array_equal(out, img)
        elif out.shape == img.shape:
            assert not np.allclose(out, img, atol=1e-3), p.name


def test_perturbations_go_the_named_way():
    img = hand_like()
    mid = (img > 0.2) & (img < 0.8)
    assert by_name("gamma_0.6").apply(img, 64)[mid].mean() > img[mid].mean()
    assert by_name("gamma_1.6").apply(img, 64)[mid].mean() < img[mid].mean()
    assert np.allclose(by_name("invert").apply(img, 64), 1 - img)
    assert np.array_equal(by_name("rotate_180").apply(img, 64), img[::-1, ::-1])
    assert by_name("noise").apply(img, 64).std() > img.std()
    jpeg = by_name("jpeg_q30").apply(img, 64)
    assert abs(float(jpeg.mean()) - float(img.mean())) < 0.01


def test_encode_png_is_lossless_for_8_bit_images():
    img = np.round(hand_like() * 255) / 255
    back = read_image(encode_png(img), name="x.png")
    # the same 8-bit levels (the decoder's float32 scaling may differ from img's in the last bit)
    assert back.dtype == np.float32 and np.array_equal(np.round(back * 255), np.round(img * 255))
    assert np.abs(back - img).max() < 1e-6


def test_select_images_takes_the_runs_split_and_a_seeded_sample():
    labelled = pd.DataFrame({"id": [str(i) for i in range(50)], "boneage": 100.0, "male": True, "path": "p"})
    meta = {"splits": {"holdout": [str(i) for i in range(10, 30)], "validation": []}}
    assert len(select_images(meta, labelled, "holdout", None)) == 20
    a = select_images(meta, labelled, "all", 7)
    assert len(a) == 7 and a["id"].tolist() == select_images(meta, labelled, "all", 7)["id"].tolist()
    with pytest.raises(ValueError, match="validation"):
        select_images(meta, labelled, "validation", None)
    with pytest.raises(ValueError, match="split"):
        select_images(meta, labelled, "train", None)


def test_report_on_the_tiny_run_has_a_row_per_perturbation(tiny_run, one_torch_thread):
    rep = robustness_report(tiny_run, limit=4, ood=False)
    table = rep.table
    assert table["perturbation"].tolist() == perturbation_names()
    assert (table["n"] == 4).all() and (table["n_failed"] == 0).all()
    for col in ("mae", "bias", "mae_change", "shift", "flagged"):
        assert np.isfinite(table[col].to_numpy(dtype=float)).all(), col
    base = table.iloc[0]
    assert base["mae_change"] == 0 and base["shift"] == 0
    # the tiny run is synthetic: that context note is on every answer but is not a flag
    assert all("synthetic_model" not in codes for codes in table["flag_codes"])
    assert base["flagged"] < 1.0
    assert len(rep.per_image) == 4 * len(PERTURBATIONS)
    assert rep.info["split"] == "validation" and rep.info["n_images"] == 4
    with pytest.raises(ValueError, match="unknown perturbation"):
        robustness_report(tiny_run, limit=1, perturbations=["sepia"], ood=False)


def test_robustness_command_json(tiny_run, one_torch_thread, capsys):
    from h2a.cli import build_parser
    from h2a.cli import robustness as command

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "robustness" not in sub.choices:  # until h2a.cli registers the module itself
        command.register(sub)
    args = parser.parse_args(["robustness", "--model", str(tiny_run), "--limit", "3", "--only", "invert",
                              "rotate_90", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["perturbation"] for r in out["perturbations"]] == [BASELINE, "invert", "rotate_90"]
    assert out["n_images"] == 3 and out["run"] == tiny_run.name
    assert all(math.isfinite(r["mae"]) for r in out["perturbations"])
    assert "out-of-distribution" in out["checks"]
    bad = parser.parse_args(["robustness", "--model", str(tiny_run), "--split", "holdout"])
    from h2a.cli.common import CliError

    with pytest.raises(CliError, match="holdout"):  # the tiny run has no holdout
        bad.func(bad)
