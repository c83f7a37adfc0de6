"""Training widgets shared by the bone-age and sex pages: the run form, the live monitor
(polled with ``st.fragment(run_every=...)``) and the runs table."""

from __future__ import annotations

import time
from dataclasses import MISSING
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from h2a.app.charts import style
from h2a.app.option_widgets import applies, label_of, option_widget, weights_hint
from h2a.app.plain import plain, safe_table
from h2a.data.preprocess import PreprocessConfig, list_configs, load_config
from h2a.device import describe_device, gpu_count, resolve_device
from h2a.engine.config import TrainConfig, TrainingError
from h2a.engine.jobs import (
    JobError,
    RunExists,
    force_stop,
    log_tail,
    request_cancel,
    resume_training,
    saved_config,
    start_training,
)
from h2a.run import FINAL_STATES, RunSummary, check_run_name, default_run_name, list_runs, run_status
from h2a.inference.tasks import get_task
from h2a.models import list_models, model_info
from h2a.options import declaration, declarations
from h2a.settings import get_settings

TASK_WORDS = {"boneage": "bone-age", "sex": "sex"}


def device_banner() -> None:
    """Say where training runs; warn that CPU training is for small, quick experiments."""
    try:
        device = resolve_device()
    except RuntimeError as exc:
        st.error(plain(exc, 600))
        return
    n = gpu_count()
    if device.type == "cuda":
        extra = f" · torchrun over {n} GPUs" if n > 1 else ""
        st.success(f"Training on **{describe_device(device)}** with bf16 autocast{extra}.", icon=":material/memory:")
    else:
        st.warning(f"Training on **{describe_device(device)}**: no GPU found. Keep images small (96-160 px) "
                   "and use a time budget; full-resolution training needs a GPU.", icon=":material/speed:")


# The form's layout: rows of TrainConfig field names ("size" is PreprocessConfig's). The
# widgets, labels, help and ranges come from the declarations; an option whose
# ``applies`` is false for the chosen architecture is left out.
FORM_ROWS: tuple[tuple[str, ...], ...] = (
    ("size", "epochs", "time_budget_min", "batch_size"),
    ("lr", "optimizer", "scheduler", "loss"),
    ("use_sex", "split", "val_fraction", "holdout_fraction"),
    ("init_from", "freeze", "patience", "progressive_from"),
    ("bn_momentum", "drop_path", "dropout", "weight_decay"),
    ("ema", "amp", "seed"),
)


def train_form(task: str, data_dir: Path, synthetic: bool) -> Path | None:
    """The run form; on submit starts a background run and returns its folder.

    The architecture is picked outside the form so that changing it reruns the page and
    the form offers only what applies to it (no ImageNet box where no weights exist).
    """
    settings = get_settings()
    archs = list_models()
    finished = [r.name for r in list_runs(task=task) if r.has_model]
    arch_decl = declaration(TrainConfig, "arch")
    default_arch = arch_decl.default if arch_decl.default in archs else archs[0]
    arch = st.selectbox(label_of(arch_decl), archs, index=archs.index(default_arch), key=f"{task}_arch",
                        help=arch_decl.opt.help)
    info = model_info(arch)
    shown = {d.name for d in declarations(TrainConfig) if applies(d, info)}
    if st.session_state.pop(f"{task}_clear_name", False):  # "choose another name": before the widget exists
        st.session_state[f"{task}_name"] = ""
    with st.form(f"train_form_{task}"):
        c1, c2, c3, c4 = st.columns(4)
        name = c1.text_input("Run name", value="", placeholder="auto: task-arch-time", key=f"{task}_name")
        saved = list_configs()
        pp_name = c2.selectbox("Preprocessing", ["(size below, defaults)"] + saved, key=f"{task}_pp",
                               help="a config saved on the Preprocessing page; otherwise the defaults at "
                                    "the image size below")
        values: dict = {}
        if "pretrained" in shown:
            values["pretrained"] = option_widget(c3, TrainConfig, "pretrained", key=f"{task}_pretrained")
        else:
            values["pretrained"] = False
            c3.caption(f"No ImageNet weights for {arch}: {weights_hint(info, settings.workspace)}.")
        if "width_mult" in shown:
            values["width_mult"] = option_widget(c4, TrainConfig, "width_mult", key=f"{task}_width_mult")
        for row in FORM_ROWS:
            fields_here = [f for f in row if f == "size" or f in shown]
            cols = st.columns(4)
            for col, field in zip(cols, fields_here):
                key = f"{task}_{field}"
                if field == "size":  # a run's default size, not the cache's
                    values["size"] = option_widget(col, PreprocessConfig, "size", key=key,
                                                   value=declaration(TrainConfig, "preprocess").default["size"])
                elif field == "init_from":
                    values[field] = option_widget(col, TrainConfig, field, key=key, values=[None] + finished,
                                                  labels={None: "(none)"})
                elif field in ("loss", "use_sex") and task == "sex":  # sex classification has neither
                    values[field] = option_widget(col, TrainConfig, field, key=key, disabled=True,
                                                  value=False if field == "use_sex" else MISSING)
                else:
                    values[field] = option_widget(col, TrainConfig, field, key=key)
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return reuse_choice(task)
    st.session_state.pop(f"{task}_reuse", None)  # a new submit replaces an unanswered question
    try:
        name = check_run_name(name.strip() or default_run_name(task, arch))
    except ValueError as exc:
        st.error(plain(str(exc)))
        return None
    size = values.pop("size")
    try:
        pcfg = load_config(pp_name) if pp_name in saved else PreprocessConfig(size=int(size))
        cfg = TrainConfig(data=str(data_dir), out=str(settings.models_dir / name), task=task, arch=arch,
                          preprocess=pcfg.to_dict(), workers=min(4, settings.workers), **values)
        cfg.validate()
        run_dir = start_training(cfg)
    except RunExists as exc:
        st.session_state[f"{task}_reuse"] = str(exc.run_dir)
        return reuse_choice(task)
    except (JobError, TrainingError, ValueError, RuntimeError) as exc:
        st.error(plain(exc, 600))  # quotes the data folder and run paths
        return None
    st.toast(f"Started {plain(name)}{' on synthetic data' if synthetic else ''}")
    return run_dir


def settings_frame(saved: dict) -> pd.DataFrame:
    """A run's stored settings (config.json) as rows, preprocessing flattened."""
    rows = [(k, v) for k, v in saved.items() if k not in ("data", "out", "preprocess")]
    rows += [(f"preprocess.{k}", v) for k, v in (saved.get("preprocess") or {}).items()]
    rows.append(("data", saved.get("data")))
    return pd.DataFrame({"setting": [k for k, _ in rows], "value": [str(v) for _, v in rows]})


def reuse_choice(task: str) -> Path | None:
    """The question a start under a stopped run's name leads to: resume it (with the settings
    it was started with, shown here; the form's are not used) or choose another name.

    Returns the run's folder once it is resumed. Asked, never assumed: resuming silently
    used to drop every setting of the form without a word."""
    pending = st.session_state.get(f"{task}_reuse")
    if not pending:
        return None
    run_dir = Path(pending)
    saved = saved_config(run_dir) or {}
    status = run_status(run_dir).get("status", "stopped")
    st.warning(f"A {plain(status)} run named **{plain(run_dir.name)}** already exists. Resume it with the "
               "settings it was started with (below; the form's settings are not used), or choose another name.",
               icon=":material/help:")
    st.dataframe(safe_table(settings_frame(saved)), hide_index=True)
    c1, c2 = st.columns(2)
    if c1.button(f"Resume {plain(run_dir.name)}", key=f"{task}_reuse_resume", type="primary"):
        st.session_state.pop(f"{task}_reuse", None)
        try:
            started = resume_training(run_dir)
        except (JobError, TrainingError, ValueError, RuntimeError) as exc:
            st.error(plain(exc, 600))
            return None
        st.toast(f"Resumed {plain(run_dir.name)}")
        return started
    if c2.button("Choose another name", key=f"{task}_reuse_other"):
        st.session_state.pop(f"{task}_reuse", None)
        st.session_state[f"{task}_clear_name"] = True
        st.rerun()
    return None


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(seconds)
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m {seconds % 60:02d}s"


def curves(history: list[dict], task: str, title: str = "") -> go.Figure:
    """Loss (left) and the validation headline metric (right) per epoch."""
    hist = pd.DataFrame(history)
    spec = get_task(task)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", spec.headline_label))
    if not hist.empty:
        fig.add_scatter(x=hist["epoch"], y=hist["train_loss"], name="train loss", row=1, col=1)
        if "val_loss" in hist:
            fig.add_scatter(x=hist["epoch"], y=hist["val_loss"], name="validation loss", row=1, col=1)
        key = spec.epoch_key
        if key in hist:
            fig.add_scatter(x=hist["epoch"], y=hist[key], name="validation " + key[4:].upper(), row=1, col=2)
    fig.update_xaxes(title_text="epoch")
    style(fig, height=340)
    fig.update_layout(title=title, legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="center", x=0.5))
    return fig


def show_run(run_dir: Path, task: str) -> None:
    """Live view of one run: status, epoch and batch bars with ETA, curves, cancel, log."""
    prog = run_status(run_dir)
    status = prog.get("status", "unknown")
    live = status not in FINAL_STATES + ("stopped", "unknown")

    @st.fragment(run_every=2 if live else None)
    def _monitor() -> None:
        p = run_status(run_dir)
        s = p.get("status", "unknown")
        icon = {"finished": ":material/check_circle:", "failed": ":material/error:", "diverged": ":material/error:",
                "cancelled": ":material/cancel:", "stopped": ":material/pause_circle:"}.get(s, ":material/sync:")
        # the run's folder name and its progress file's words: text, not Markdown
        st.markdown(f"**{plain(run_dir.name)}** · {icon} {plain(s)} · {plain(p.get('device', ''))}")
        if p.get("message"):
            (st.error if s in ("failed", "diverged") else st.caption)(plain(p["message"], 1000))
        epochs = p.get("epochs") or 1
        epoch = int(p.get("epoch") or 0)
        batches = int(p.get("batches") or 0)
        batch = int(p.get("batch") or 0)
        frac_epochs = min(1.0, ((epoch - 1) + (batch / batches if batches else 0)) / epochs) if epoch else 0.0
        if s == "finished":
            frac_epochs = 1.0
        st.progress(frac_epochs, text=f"epoch {epoch}/{epochs} · ETA {_eta(p.get('eta_s')) if s not in FINAL_STATES else '-'}")
        if batches:
            st.progress(min(1.0, batch / batches), text=f"batch {batch}/{batches}"
                        + (f" · {p['train_size']} px" if p.get("train_size") else "")
                        + (f" · data wait {100 * p.get('data_wait_share', 0):.0f}%" if p.get("data_wait_share") is not None else ""))
        if p.get("history"):
            st.plotly_chart(curves(p["history"], task), width="stretch", key=f"curves-{run_dir.name}")
        if s not in FINAL_STATES and s not in ("stopped", "unknown"):
            c1, c2 = st.columns([1, 4])
            if c1.button("Cancel run", key=f"cancel-{run_dir.name}"):
                if request_cancel(run_dir):
                    st.toast("Cancel requested: the run stops after the current batch and keeps its checkpoint.")
                else:
                    st.toast("The run's process is no longer running.")
            if c2.button("Force stop", key=f"kill-{run_dir.name}", help="only if cancel does not respond"):
                if not force_stop(run_dir):
                    st.toast("Nothing stopped: the process this page started is gone (or was started "
                             "elsewhere, e.g. from the command line).")
        with st.expander("Log"):
            st.code(log_tail(run_dir) or "(no log: the run was started from the command line)", language=None)
        if live and s in FINAL_STATES + ("stopped",):
            st.rerun()  # leave fragment polling once the run ends

    _monitor()


def runs_table(runs: list[RunSummary]) -> pd.DataFrame:
    """One row per run of ``list_runs(task=...)``."""
    rows = []
    for r in runs:
        rows.append({
            "run": r.name, "status": r.status, "arch": r.arch,
            "epoch": f"{r.epoch or 0}/{r.epochs or '?'}",
            get_task(r.task).headline_label: r.headline,
            "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated)),
        })
    return pd.DataFrame(rows)


def new_run_and_pick(task: str, ds, empty_hint: str) -> tuple[Path, pd.DataFrame]:
    """Device banner, the 'new run' form and the run picker shared by the task pages.

    Stops the page with ``empty_hint`` while the task has no run; returns the picked run's
    folder and the runs table."""
    device_banner()
    runs = list_runs(task=task)
    with st.expander(f"New {TASK_WORDS[task]} run", expanded=not runs):
        started = train_form(task, ds.root, ds.synthetic)
        if started is not None:
            st.session_state[f"{task}_run"] = str(started)
            st.session_state[f"{task}_pick"] = started.name  # show the new run, not the last one picked
            runs = list_runs(task=task)
    table = runs_table(runs)
    if table.empty:
        st.info(empty_hint)
        st.stop()
    names = table["run"].tolist()
    current = st.session_state.get(f"{task}_run")
    current_name = Path(current).name if current else names[0]
    shipped = {r.name for r in runs if r.shipped}
    pick = st.selectbox("Run", names, index=names.index(current_name) if current_name in names else 0,
                        key=f"{task}_pick",
                        format_func=lambda n: f"{n} · shipped with H2A" if n in shipped else n)
    # the listed run's own folder: a shipped model lives outside the models folder
    return next((r.path for r in runs if r.name == pick), get_settings().models_dir / pick), table
