"""Shipping a run: the self-contained folder committed under ``models/<name>/``.

Why: a fresh clone must answer a real radiograph without the RSNA download or an hour of
training. A shipped run is an ordinary run folder (every loader reads it as one) whose
weights are ``model.safetensors`` (never pickle: data, not code; half precision where the
outputs move by less than ``HALF_TOLERANCE``, measured here on the run's own held-out
images), with the files a prediction needs (config, metadata, calibration, coverage, the
OOD reference as ``ood.safetensors``, its sites) and a model card (``README.md``) written
from the run's own measurements (``h2a.inference.model_card``).

Core module: no streamlit.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from h2a.run import SHIPPED_WEIGHTS, Run, load_weights
from h2a.inference.arrays import predict_arrays
from h2a.inference.evaluate import split_images
from h2a.inference.loading import load_run
from h2a.predict.ood import OOD_SHIPPED, load_ood_reference
from h2a.inference.metrics import roc_auc
from h2a.inference.model_card import write_card

__all__ = ["HALF_TOLERANCE", "MAX_FILE_MB", "ship_run"]

# The largest change half precision may cause: bone age, any one estimate (months); sex, the
# held-out AUC (the probabilities themselves move more: the check reports both).
HALF_TOLERANCE = {"boneage": 0.05, "sex": 0.001}
MAX_FILE_MB = 10.0  # the most a committed weight file may weigh
CHECK_IMAGES = 1101  # held-out images the precision check predicts (the recipe's whole held-out split)


HALF_MIN_VALUES = 4096  # smaller tensors (BatchNorm statistics, biases, the head's small layers) stay float32


def _halvable(state: dict[str, torch.Tensor]) -> list[str]:
    """The tensors float16 may store: floating, at least ``HALF_MIN_VALUES`` values, in the
    trunk (the head writes the answer and is small), in state-dict order (input side first)."""
    return [k for k, v in state.items()
            if k.startswith("backbone.") and v.is_floating_point() and v.numel() >= HALF_MIN_VALUES]


def _half(state: dict[str, torch.Tensor], exact: set[str] = frozenset()) -> dict[str, torch.Tensor]:
    """The halvable tensors but ``exact`` in float16, everything else in float32.

    The small ones are a few percent of the bytes, and rounding them (a BatchNorm variance, a
    bias) moved the bone-age model's held-out estimates by up to 0.18 months, against 0.04 with
    them kept exact."""
    halve = set(_halvable(state)) - set(exact)
    return {k: (v.half() if k in halve else v).contiguous() for k, v in state.items()}


def _file_mb(state: dict[str, torch.Tensor], exact: set[str]) -> float:
    halve = set(_halvable(state)) - exact
    return sum(v.numel() * (2 if k in halve else v.element_size()) for k, v in state.items()) / 2 ** 20


def _outputs(run, images, male: np.ndarray) -> np.ndarray:
    raw = predict_arrays(run.model, images, male.astype(np.float32), run.norm, run.device, flip_tta=True)
    return np.asarray(run.to_output(raw), float)


def _precision_check(src: Path, tmp: Path, n: int, progress=None) -> dict:
    """Largest change of the outputs on ``n`` held-out images when the weights are stored in
    half precision (and loaded back to float32)."""
    run = load_run(src)
    split = "holdout" if (run.meta.get("splits") or {}).get("holdout") else "validation"
    images = split_images(run, None, split, progress)
    rows = images.rows[:n]
    male = images.labelled["male"].astype(bool).to_numpy()[:n]
    u8 = images.cache.take(rows)
    full = _outputs(run, u8, male)
    half = _outputs(load_run(tmp), u8, male)
    diff = np.abs(half - full)
    out = {"n_images": int(len(rows)), "procedure": "the image and its mirror", "split": split,
           "max_abs_change": float(diff.max()), "mean_abs_change": float(diff.mean()),
           "unit": "months" if run.task == "boneage" else "probability of male"}
    if run.task == "sex":
        auc_full, auc_half = roc_auc(male, full), roc_auc(male, half)
        change = abs(auc_half - auc_full) if auc_full is not None and auc_half is not None else 0.0
        out.update(max_abs_change_probability=out["max_abs_change"], auc_float32=auc_full, auc_float16=auc_half,
                   max_abs_change=float(change), unit="AUC")
    return out


def _ood_to_safetensors(src_run, dst: Path) -> dict | None:
    """The run's OOD reference (built now if it has none) as ood.safetensors."""
    ref = load_ood_reference(src_run)
    if ref is None:
        return None
    tensors = {"train": torch.from_numpy(np.ascontiguousarray(ref.train)).half(),
               "mu": torch.from_numpy(np.ascontiguousarray(ref.mu)).float(),
               "sd": torch.from_numpy(np.ascontiguousarray(ref.sd)).float(),
               "val_distances": torch.from_numpy(np.ascontiguousarray(ref.val_distances)).float()}
    meta = {"threshold": repr(float(ref.threshold)), "k": str(ref.k), "quantile": repr(float(ref.quantile)),
            "calibrated_on": ref.calibrated_on}
    save_file(tensors, str(dst / OOD_SHIPPED), metadata=meta)
    return {"file": OOD_SHIPPED, "n_reference": int(len(ref.train)), "calibrated_on": ref.calibrated_on}


def _choose_half(state: dict[str, torch.Tensor], src: Path, tmp: Path, tolerance: float, half: bool | None,
                 n: int, progress) -> tuple[set[str] | None, dict]:
    """Which trunk tensors to keep in float32 (None: store everything in float32) and the last
    precision check. Rounding errors add up over the layers, so when the check fails, the
    halvable tensors are kept exact one at a time from the input side (their rounding passes
    through the most layers) until the check passes or the file would exceed the size limit.
    The 18-epoch release model needed one (0.055 months -> 0.038)."""
    exact: set[str] = set()
    order = _halvable(state)
    while True:
        save_file(_half(state, exact), str(tmp / SHIPPED_WEIGHTS))
        check = _precision_check(src, tmp, n, progress)
        if half is True or (half is None and check["max_abs_change"] < tolerance):
            return exact, {**check, "tensors_kept_float32": sorted(exact)}
        nxt = order[len(exact)] if half is None and len(exact) < len(order) else None
        if nxt is None or _file_mb(state, exact | {nxt}) > MAX_FILE_MB:
            return None, check
        exact.add(nxt)


def _precision_text(exact: set[str] | None) -> str:
    if exact is None:
        return "float32"
    extra = f", {len(exact)} more kept exact to pass the check" if exact else ""
    return f"float16 (trunk tensors of {HALF_MIN_VALUES}+ values{extra}; the rest float32)"


def ship_run(run_dir: str | Path, out: str | Path, *, half: bool | None = None, check_images: int = CHECK_IMAGES,
             card: bool = True, progress=None, trained_on: str | None = None) -> dict:
    """Write run ``run_dir`` as a shipped run folder ``out`` and return what was done.

    ``half`` None: half precision when the held-out check stays within ``HALF_TOLERANCE``
    (else float32); True / False force it. ValueError when a weight file would exceed
    ``MAX_FILE_MB`` or the run is unfinished. ``trained_on``: a note on the machine and
    conditions of training for the card (e.g. the CPU and what else ran).
    """
    src_run = Run.open(run_dir)
    src = src_run.path
    meta = src_run.meta
    if meta is None:
        raise ValueError(f"{src.name}: not a finished run (no metadata.json)")
    out = Path(out)
    if out.resolve() == src.resolve():
        raise ValueError("--ship needs another folder than the run itself")
    tmp = out.parent / f".{out.name}.shipping"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src_run.copy_records(Run.at(tmp))
    state = load_weights(src)
    meta_out = dict(meta)
    meta_out["shipped"] = {"name": out.name, "from_run": src.name, "when": time.strftime("%Y-%m-%d"),
                           "trained_on": trained_on}
    Run.at(tmp).write_meta(meta_out)
    tolerance = HALF_TOLERANCE[meta["task"]]
    exact, check = _choose_half(state, src, tmp, tolerance, half, check_images, progress)
    use_half = exact is not None
    if not use_half:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / SHIPPED_WEIGHTS))
    ood = _ood_to_safetensors(load_run(src), tmp)
    meta_out["shipped"].update(precision=_precision_text(exact), precision_check={**check, "tolerance": tolerance},
                               ood=ood)
    Run.at(tmp).write_meta(meta_out)
    too_big = [p.name for p in tmp.rglob("*.safetensors") if p.stat().st_size > MAX_FILE_MB * 2 ** 20]
    if too_big:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{', '.join(too_big)} over {MAX_FILE_MB:g} MB: ship in half precision or a smaller model")
    if card:
        write_card(tmp, name=out.name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return {"out": str(out), "from_run": src.name, "precision": meta_out["shipped"]["precision"],
            "precision_check": meta_out["shipped"]["precision_check"], "ood": ood, "files": sizes}
