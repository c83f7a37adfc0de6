"""Evaluations kept on disk, so a run is evaluated once per model, data and settings.

Evaluating a run on its split builds the tensor cache and predicts 500-1,100 full-size
images (minutes on a CPU). The pages ask for the same evaluation in every new server,
session and restart, so the result is stored under ``<workspace>/evaluations/`` as one
Parquet file (predictions, with the metrics as JSON in the file's metadata) written
atomically. The file name is a hash of everything that changes the answer: the run
folder, model.pt's size and mtime, the data's fingerprint and folder, the split and the
test-time-augmentation settings. A retrained model or changed data is a new key (a
miss); an unreadable, truncated or foreign file is a miss too, never an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from h2a.run import MODEL, atomic_write_bytes, json_bytes, weights_file
from h2a.progress import ProgressFn
from h2a.settings import get_settings
from h2a.inference import evaluate as ev

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the stored layout or the metrics' meaning changes: old files become misses (2: one seed per image for TTA copies)
_META = b"h2a_evaluation"


@dataclass(frozen=True)
class EvalKey:
    """Everything an evaluation's answer depends on."""

    run: str  # resolved run folder
    model_size: int
    model_mtime_ns: int
    data: str | None  # resolved data folder, None = the run's own dataset
    data_fingerprint: str
    split: str | None
    tta: bool
    views: int

    @property
    def digest(self) -> str:
        payload = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]


def eval_key(run_dir: str | Path, data: str | Path | None, data_fingerprint: str, split: str | None,
             tta: bool, views: int = 0) -> EvalKey:
    """The key of one evaluation; model.pt's (size, mtime) so a retrained run is a miss."""
    run = Path(run_dir).resolve()
    try:
        st = (weights_file(run) or run / MODEL).stat()
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size, mtime = -1, -1
    return EvalKey(str(run), size, mtime, None if data is None else str(Path(data).resolve()),
                   str(data_fingerprint), split, bool(tta), int(views))


def store_dir() -> Path:
    return get_settings().workspace / "evaluations"


def path_of(key: EvalKey) -> Path:
    return store_dir() / f"{key.digest}.parquet"


def load(key: EvalKey) -> tuple[dict, pd.DataFrame] | None:
    """(metrics, predictions) stored for this key, or None (absent, corrupt or another key's)."""
    import pyarrow.parquet as pq

    path = path_of(key)
    try:
        table = pq.read_table(io.BytesIO(path.read_bytes()))
        stored = json.loads((table.schema.metadata or {})[_META])
        if stored.get("key") != asdict(key) or not isinstance(stored.get("metrics"), dict):
            return None
        preds = table.to_pandas()
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a miss, recomputed and overwritten
        log.warning("ignoring unreadable stored evaluation %s: %s", path, exc)
        return None
    return stored["metrics"], preds


def save(key: EvalKey, metrics: dict, preds: pd.DataFrame) -> Path | None:
    """Store an evaluation atomically; None (logged) when it cannot be written, e.g. a full disk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = path_of(key)
    try:
        table = pa.Table.from_pandas(preds)
        meta = dict(table.schema.metadata or {})
        meta[_META] = json_bytes({"key": asdict(key), "metrics": metrics})
        buf = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(meta), buf)
        atomic_write_bytes(path, buf.getvalue())
    except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
        log.warning("could not store the evaluation in %s: %s", path, exc)
        return None
    return path


def evaluate_cached(key: EvalKey, run_dir: str | Path, data: str | Path | None, *,
                    progress: ProgressFn | None = None) -> tuple[dict, pd.DataFrame]:
    """The stored evaluation for ``key``, or evaluate now and store it. Raises what
    ``h2a.inference.evaluate.evaluate`` raises (ValueError, FileNotFoundError, KeyError)."""
    hit = load(key)
    if hit is not None:
        return hit

    result = ev.evaluate(run_dir, data, split=key.split, flip_tta=key.tta, tta_views=key.views, progress=progress)
    metrics = json.loads(json_bytes(result.metrics))  # exactly what a later load returns
    save(key, metrics, result.predictions)
    return metrics, result.predictions
