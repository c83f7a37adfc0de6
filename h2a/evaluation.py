"""Predictions from a trained run and the metrics that judge them.

Shared by the training loop (validation each epoch), ``python -m h2a evaluate``, the
evaluation page and prediction, so every figure is computed one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from h2a.device import use_channels_last
from h2a.models import H2AModel, create_model, fold_batchnorm, model_info
from h2a.preprocess import PreprocessConfig, augment_samples
from h2a.progress import ProgressFn, report
from h2a.runs import METADATA, MODEL, read_json, safe_load


# ---------------------------------------------------------------- model input

def input_norm(arch: str, cfg: PreprocessConfig) -> tuple[float, float] | None:
    """(mean, std) the architecture's weights expect for one gray channel, or None for per-image."""
    if cfg.normalize == "per_image":
        return None
    mean, std = model_info(arch).norm(1)
    return float(mean[0]), float(std[0])


def to_input(u8: torch.Tensor, norm: tuple[float, float] | None) -> torch.Tensor:
    """uint8 (B,1,H,W) on the device -> normalised float, ready for the model."""
    x = u8.float().div_(255.0)
    if norm is None:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return (x - mean) / std
    return (x - norm[0]) / norm[1]


def array_input(u8: np.ndarray, norm: tuple[float, float] | None, device: torch.device) -> torch.Tensor:
    """uint8 numpy image (H,W) or batch (N,H,W) -> normalised (N,1,H,W) on the device; a
    cache memmap slice works (it is copied once, contiguously)."""
    t = torch.from_numpy(np.ascontiguousarray(u8))
    return to_input((t[None, None] if t.ndim == 2 else t[:, None]).to(device), norm)


# ---------------------------------------------------------------- loading a run

@dataclass
class LoadedRun:
    """A trained model ready to predict, with everything needed to feed it.

    Inference only: its BatchNorms are folded into the convolutions (``fold_batchnorm``).
    """

    path: Path
    model: H2AModel
    meta: dict
    preprocess: PreprocessConfig
    norm: tuple[float, float] | None
    device: torch.device

    @property
    def task(self) -> str:
        return self.meta["task"]

    def to_output(self, raw: np.ndarray) -> np.ndarray:
        """Model scalars -> months (bone age) or P(male) (sex)."""
        if self.task == "boneage":
            return raw * self.meta["target_std"] + self.meta["target_mean"]
        return 1.0 / (1.0 + np.exp(-raw))


def load_run(run_dir: str | Path, device: torch.device | None = None, *, fold_bn: bool = True) -> LoadedRun:
    """Rebuild the architecture from metadata.json and load model.pt (weights only).

    ``fold_bn=False`` keeps the BatchNorms (only bench/bench_inference.py wants that).
    """
    run_dir = Path(run_dir)
    meta = read_json(run_dir / METADATA)
    if meta is None or not (run_dir / MODEL).exists():
        raise FileNotFoundError(f"{run_dir.name}: not a finished run (no metadata.json / model.pt yet)")
    device = device or torch.device("cpu")
    kwargs = dict(meta["model"])
    name = kwargs.pop("name")
    model = create_model(name, pretrained=False, **kwargs)
    model.load_state_dict(safe_load(run_dir / MODEL))
    model.to(device).eval()
    cfg = PreprocessConfig.from_dict(meta["preprocess"])
    # BatchNorm folded into the convolutions: the same eval-mode outputs, fewer passes over
    # the activations (inference only: a LoadedRun never trains)
    if fold_bn:
        fold_batchnorm(model.backbone, torch.zeros(1, model.config["in_chans"], cfg.size, cfg.size, device=device))
    if use_channels_last(device, None):
        # float32 inference: NHWC weights make oneDNN/cuDNN run every conv NHWC whatever the
        # input's layout, ~1.8x the images/s of NCHW for Lite0 on a 2-core CPU.
        model.to(memory_format=torch.channels_last)
    return LoadedRun(run_dir, model, meta, cfg, input_norm(name, cfg), device)


@torch.inference_mode()
def predict_arrays(
    model: H2AModel,
    images: np.ndarray,
    sex: np.ndarray | None,
    norm: tuple[float, float] | None,
    device: torch.device,
    *,
    batch_size: int = 32,  # on CPU 32 beat 64 and 128 (cache-resident activations)
    flip_tta: bool = False,
    augment: PreprocessConfig | None = None,
    views: int = 0,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Raw model outputs for uint8 images (N,H,W) (a cache memmap slice works).

    ``flip_tta`` averages the output over the image and its horizontal mirror; ``views``
    more copies drawn with ``augment``'s ranges (seeded, so reruns agree) join the mean.
    """
    model.eval()
    n = len(images)
    out = np.empty(n, dtype=np.float32)
    extra = views if augment is not None else 0
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        u8 = np.ascontiguousarray(images[start:stop])
        x = array_input(u8, norm, device)
        s = None
        if model.use_sex:
            s = torch.as_tensor(sex[start:stop], dtype=torch.float32, device=device)
        y = model(x, s).float()
        count = 1
        if flip_tta:
            y = y + model(torch.flip(x, dims=[3]), s).float()
            count += 1
        if extra:
            copies = np.stack([augment_samples(im, augment, n=extra, seed=start + i) for i, im in enumerate(u8)], 1)
            for v in range(extra):
                y = y + model(array_input(copies[v], norm, device), s).float()
            count += extra
        out[start:stop] = (y / count).cpu().numpy()
        report(progress, stop, n, "predicting")
    return out


# ---------------------------------------------------------------- metrics

def age_band_labels(ages: np.ndarray, width: int = 24) -> np.ndarray:
    """'0-2 y', '2-4 y', ... labels for 2-year bands of bone age in months."""
    lo = (np.floor(np.asarray(ages, float) / width) * width).astype(int)
    return np.array([f"{a // 12}-{(a + width) // 12} y" for a in lo])


def _band_order(labels) -> list[str]:
    return sorted(set(labels), key=lambda s: int(s.split("-")[0]))


def regression_metrics(y: np.ndarray, pred: np.ndarray, male: np.ndarray) -> dict:
    """MAE, RMSE, R², share within 12 months, MAE by sex and by 2-year band."""
    y, pred, male = np.asarray(y, float), np.asarray(pred, float), np.asarray(male, bool)
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    bands = age_band_labels(y)
    return {
        "task": "boneage",
        "n": int(len(y)),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        "r2": float(1 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else None,
        "bias": float(err.mean()),
        "within_12_months": float((np.abs(err) <= 12).mean()),
        "mae_baseline_mean": float(np.abs(y - y.mean()).mean()),
        "mae_by_sex": {
            label: float(np.abs(err[mask]).mean())
            for label, mask in (("male", male), ("female", ~male)) if mask.any()
        },
        "mae_by_age_bin": {b: float(np.abs(err[bands == b]).mean()) for b in _band_order(bands)},
        "n_by_age_bin": {b: int((bands == b).sum()) for b in _band_order(bands)},
    }


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, int)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, score))


def classification_metrics(y: np.ndarray, prob: np.ndarray, boneage: np.ndarray | None = None) -> dict:
    """Accuracy, balanced accuracy, ROC-AUC, confusion matrix, AUC by 2-year age band."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    y, prob = np.asarray(y, int), np.asarray(prob, float)
    pred = (prob >= 0.5).astype(int)
    out = {
        "task": "sex",
        "n": int(len(y)),
        "share_male": float(y.mean()) if len(y) else None,
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 1 else None,
        "auc": roc_auc(y, prob),
        "confusion": confusion_matrix(y, pred, labels=[0, 1]).tolist(),  # rows true F/M, cols predicted F/M
    }
    if boneage is not None:
        ages = np.asarray(boneage, float)
        ok = np.isfinite(ages)
        bands = age_band_labels(ages[ok])
        out["auc_by_age_band"] = {b: roc_auc(y[ok][bands == b], prob[ok][bands == b]) for b in _band_order(bands)}
        out["n_by_age_band"] = {b: int((bands == b).sum()) for b in _band_order(bands)}
    return out


def predictions_frame(ids, y, pred, male, task: str, boneage=None) -> pd.DataFrame:
    """One row per image, sorted worst first (largest error / most confident mistake)."""
    df = pd.DataFrame({"id": list(ids), "male": np.asarray(male, bool)})
    if boneage is not None and task != "boneage":
        df["boneage"] = np.asarray(boneage, float)
    if task == "boneage":
        df["boneage"] = np.asarray(y, float)
        df["predicted"] = np.asarray(pred, float)
        df["error"] = df["predicted"] - df["boneage"]
        return df.sort_values("error", key=np.abs, ascending=False).reset_index(drop=True)
    df["p_male"] = np.asarray(pred, float)
    df["correct"] = (df["p_male"] >= 0.5) == df["male"]
    df["confidence"] = np.abs(df["p_male"] - 0.5) * 2
    return df.sort_values(["correct", "confidence"], ascending=[True, False]).reset_index(drop=True)


# ---------------------------------------------------------------- evaluating a run on data

@dataclass
class EvalResult:
    metrics: dict
    predictions: pd.DataFrame  # id, male, boneage, predicted, error (or p_male...), worst first
    run: LoadedRun
    cache: object  # the TensorCache the images came from (for galleries and CAM)
    rows: np.ndarray  # cache rows aligned with the input order of predictions before sorting


def evaluate(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    split: str | None = None,
    flip_tta: bool = False,
    tta_views: int = 0,
    device: torch.device | None = None,
    progress: ProgressFn | None = None,
) -> EvalResult:
    """Metrics of a run on a dataset.

    ``data`` None means the run's own dataset. ``split``: 'all' (every labelled image,
    the default for another folder), 'validation' or 'holdout' (the run's saved ids,
    the default for its own folder is 'validation'). ``tta_views`` adds that many
    augmented copies (the run's own augmentation ranges) to the averaged prediction.
    """
    from h2a.cache import build_cache
    from h2a.datasets import load_dataset
    from h2a.runs import resolve_run

    run = load_run(resolve_run(run_dir), device)
    own = str(Path(run.meta["dataset"]["path"]))
    data_path = Path(data) if data else Path(own)
    same = data_path.resolve() == Path(own).resolve()
    split = split or ("validation" if same and not data else "all")
    ds = load_dataset(data_path)
    labelled = ds.labelled() if run.task == "boneage" else ds.with_images()[ds.with_images()["male"].notna()]
    if split in ("validation", "holdout"):
        wanted = set(run.meta["splits"].get(split, []))
        if not wanted:
            raise ValueError(f"run {run.path.name} has no {split} ids (train with --holdout-fraction for a holdout)")
        labelled = labelled[labelled["id"].astype(str).isin(wanted)]
    if labelled.empty:
        raise ValueError(f"{ds.name}: no labelled images to evaluate on ({split})")
    cache = build_cache(ds, run.preprocess, progress=progress)
    ids = labelled["id"].astype(str).tolist()
    rows = cache.rows(ids)
    ok = cache.ok[rows]
    labelled, rows = labelled[ok], rows[ok]
    male = labelled["male"].astype(bool).to_numpy()
    raw = predict_arrays(run.model, cache.take(rows), male.astype(np.float32), run.norm, run.device,
                         flip_tta=flip_tta, augment=run.preprocess, views=tta_views, progress=progress)
    out = run.to_output(raw)
    if run.task == "boneage":
        metrics = regression_metrics(labelled["boneage"].to_numpy(), out, male)
        preds = predictions_frame(labelled["id"], labelled["boneage"], out, male, "boneage")
    else:
        metrics = classification_metrics(male.astype(int), out, labelled["boneage"].to_numpy())
        preds = predictions_frame(labelled["id"], male, out, male, "sex", boneage=labelled["boneage"])
    metrics.update(run=run.path.name, data=str(data_path), split=split, flip_tta=flip_tta, tta_views=tta_views,
                   n_failed_images=int((~ok).sum()))
    return EvalResult(metrics, preds, run, cache, rows)
