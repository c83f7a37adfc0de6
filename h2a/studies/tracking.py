"""A study in MLflow: one parent run per study, each trial's own run nested under it.

Tracking is a convenience, never a condition: every call here is best effort, and a study
runs without MLflow rather than not at all. ``mlflow`` is imported inside each call, in its
``try``: importing it costs seconds, and a broken install must not fail a trial.
"""

from __future__ import annotations

from h2a.engine.tracking import MLflowTracker
from h2a.settings import get_settings

PARENT_ATTR = "mlflow_parent_run_id"  # the study's user attribute holding its parent run's id


def nest_mlflow_run(eng, parent_run_id: str, study: str, number: int) -> None:
    """Tag the run's MLflow run as a child of the study's (best effort, never fatal)."""
    tracker = next((cb for cb in eng.callbacks if isinstance(cb, MLflowTracker)), None)
    if tracker is None or not tracker.enabled or not tracker.run_id:
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=get_settings().mlflow_uri)
        for key, value in (("mlflow.parentRunId", parent_run_id), ("h2a.study", study), ("h2a.trial", str(number))):
            client.set_tag(tracker.run_id, key, value)
    except Exception:  # noqa: BLE001, S110 - tracking must not fail a trial
        pass


def ensure_parent_run(study, task: str) -> str | None:
    """The study's MLflow parent run (created once, its id kept in the study's attributes)."""
    if study.user_attrs.get(PARENT_ATTR):
        return study.user_attrs[PARENT_ATTR]
    try:
        from mlflow import MlflowClient

        settings = get_settings()
        settings.workspace.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=settings.mlflow_uri)
        exp = client.get_experiment_by_name(f"h2a-{task}")
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(f"h2a-{task}")
        run = client.create_run(exp_id, run_name=f"study {study.study_name}", tags={"h2a.study": study.study_name})
        client.log_param(run.info.run_id, "study", study.study_name)
        study.set_user_attr(PARENT_ATTR, run.info.run_id)
        return run.info.run_id
    except Exception:  # noqa: BLE001 - a study runs without tracking rather than not at all
        return None


def close_parent_run(study, done: bool) -> None:
    """Mark the parent run FINISHED once the study reached its target (a stopped study's stays open)."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if not run_id or not done:
        return
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=get_settings().mlflow_uri).set_terminated(run_id, "FINISHED")
    except Exception:  # noqa: BLE001, S110 - best effort
        pass
