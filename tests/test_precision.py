"""Precision chosen by the CPU (``--amp auto``) and recipes that give the same model twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from h2a import device as dev
from h2a.data.preprocess import PreprocessConfig
from h2a.engine.config import TrainConfig
from h2a.engine.trainer import train
from tests.conftest import REPO

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, mkldnn, want", [
    ({"avx2", "fma"}, False, None),  # an AVX2-only EPYC: float32, never a refusal
    ({"avx512f", "avx512bw"}, True, None),  # AVX512 without bf16: oneDNN would emulate it, slower than float32
    ({"avx512f", "avx512_bf16"}, True, torch.bfloat16),
    ({"avx512f", "amx_bf16", "amx_tile"}, True, torch.bfloat16),
    (set(), False, None),  # no /proc/cpuinfo
])
def test_auto_picks_bf16_only_where_native(monkeypatch, flags, mkldnn, want):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn)
    dtype, why = dev.choose_amp(CPU, "auto")
    assert dtype == want
    assert why.startswith("native bf16") == (want is not None)
    assert dev.choose_amp(CPU, "off") == (None, "off: float32")


def test_bf16_insisted_on_a_cpu_without_it_says_to_use_auto(monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(RuntimeError, match="--amp auto"):
        dev.choose_amp(CPU, "bf16")


def test_recipes_use_auto_or_say_why_not():
    """Every recipe runs on a CPU without bf16: none insists on it."""
    for recipe in sorted((REPO / "recipes").glob("*.sh")):
        text = recipe.read_text()
        assert "--amp bf16" not in text, recipe.name
        assert "--time-budget" not in text.split("set -euo pipefail")[1], f"{recipe.name}: a budget makes the model depend on speed"
        assert "--epochs" in text and "--seed" in text, recipe.name


def test_same_config_trains_the_same_model_twice(demo_dir, tmp_path, one_torch_thread):
    """Seeded end to end: two runs of one command give the same validation figure and weights."""
    def run(name: str) -> Path:
        cfg = TrainConfig(data=str(demo_dir), out=str(tmp_path / name), arch="tiny_cnn", pretrained=False,
                          preprocess=PreprocessConfig(size=48, rotation=5.0, shift=0.05).to_dict(), epochs=2,
                          batch_size=32, lr=3e-3, workers=0, seed=3, amp="off")
        train(cfg, log=lambda m: None)
        return tmp_path / name

    a, b = run("a"), run("b")
    ma = json.loads((a / "metadata.json").read_text())["metrics"]["mae"]
    mb = json.loads((b / "metadata.json").read_text())["metrics"]["mae"]
    assert ma == pytest.approx(mb, abs=1e-6)
    wa, wb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
