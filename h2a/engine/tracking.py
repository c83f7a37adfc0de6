"""MLflow logging from rank 0; a tracking failure is reported, never fatal to training."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from h2a.engine.callbacks import Callback
from h2a.engine.config import TrainConfig
from h2a.settings import get_settings


class MLflowTracker(Callback):
    """One MLflow run per H2A run (resumed by id): params once, each epoch's record, final metrics.

    Every MLflow call is guarded: a broken store disables tracking with a message in
    progress.json instead of failing hours of training.
    """

    def __init__(self, enabled: bool, cfg: TrainConfig, run_id: str | None) -> None:
        self.enabled = enabled
        self.run_id = run_id
        self.error: str | None = None
        if not enabled:
            return
        try:
            import mlflow

            self.mlflow = mlflow
            settings = get_settings()
            settings.workspace.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(settings.mlflow_uri)
            mlflow.set_experiment(f"h2a-{cfg.task}")
            run = mlflow.start_run(run_id=run_id, run_name=Path(cfg.out).name)
            self.run_id = run.info.run_id
            if run_id is None:
                params = {k: v for k, v in asdict(cfg).items() if k != "preprocess"}
                params.update({f"pp_{k}": v for k, v in cfg.preprocess.items()})
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        except Exception as exc:  # noqa: BLE001 - tracking must not kill a run
            self.enabled = False
            self.error = f"MLflow tracking disabled: {exc}"

    def log(self, metrics: dict, step: int) -> None:
        if self.enabled:
            try:
                self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                                         if isinstance(v, (int, float)) and v is not None and math.isfinite(v)},
                                        step=step)
            except Exception as exc:  # noqa: BLE001
                self.error = f"MLflow logging failed: {exc}"

    def on_epoch_end(self, eng, record: dict) -> None:
        self.log({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])

    def close(self, status: str) -> None:
        if self.enabled:
            try:
                self.mlflow.end_run(status={"finished": "FINISHED", "cancelled": "KILLED"}.get(status, "FAILED"))
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass
