"""Training widgets shared by the bone-age and sex pages: the run form, the live monitor
(polled with ``st.fragment(run_every=...)``) and the runs table."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from h2a.app.charts import style
from h2a.settings import get_settings
from h2a.device import describe_device, gpu_count, resolve_device
from h2a.engine.jobs import JobError, force_stop, log_tail, request_cancel, start_training
from h2a.models import list_models, model_info
from h2a.data.preprocess import PreprocessConfig, list_configs, load_config
from h2a.engine.runs import FINAL_STATES, list_runs, run_status
from h2a.engine.config import TrainConfig

TASK_WORDS = {"boneage": "bone-age", "sex": "sex"}


def device_banner() -> None:
    """Say where training runs; warn that CPU training is for small, quick experiments."""
    try:
        device = resolve_device()
    except RuntimeError as exc:
        st.error(str(exc))
        return
    n = gpu_count()
    if device.type == "cuda":
        extra = f" · torchrun over {n} GPUs" if n > 1 else ""
        st.success(f"Training on **{describe_device(device)}** with bf16 autocast{extra}.", icon=":material/memory:")
    else:
        st.warning(f"Training on **{describe_device(device)}**: no GPU found. Keep images small (96-160 px) "
                   "and use a time budget; full-resolution training needs a GPU.", icon=":material/speed:")


def _default_name(task: str, arch: str) -> str:
    return f"{task}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_form(task: str, data_dir: Path, synthetic: bool) -> Path | None:
    """The run form; on submit starts a background run and returns its folder."""
    settings = get_settings()
    archs = list_models()
    finished = [r for r in list_runs(task=task) if r.has_model]
    with st.form(f"train_form_{task}"):
        c1, c2, c3 = st.columns(3)
        arch = c1.selectbox("Architecture", archs, index=archs.index("efficientnet_lite0") if "efficientnet_lite0" in archs else 0,
                            key=f"{task}_arch")
        name = c2.text_input("Run name", value="", placeholder="auto: task-arch-time", key=f"{task}_name")
        pretrained = c3.checkbox("ImageNet weights", value=True, key=f"{task}_pretrained",
                                 help="EfficientNet-Lite0 ships them; other architectures need a weights file "
                                      "in <workspace>/weights (the run says which).")
        saved = list_configs()
        c1, c2, c3, c4 = st.columns(4)
        pp_name = c1.selectbox("Preprocessing", ["(size below, defaults)"] + saved, key=f"{task}_pp")
        size = c2.select_slider("Image size (px)", [64, 96, 128, 160, 192, 224, 256, 299, 384, 500, 512], value=128,
                                key=f"{task}_size")
        epochs = c3.number_input("Epochs", 1, 500, 10, key=f"{task}_epochs")
        budget = c4.number_input("Time budget (min, 0 = none)", 0.0, 1440.0, 0.0, step=1.0, key=f"{task}_budget")
        c1, c2, c3, c4 = st.columns(4)
        batch = c1.select_slider("Batch size", [4, 8, 16, 32, 64, 128, 256], value=32, key=f"{task}_batch")
        lr = c2.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key=f"{task}_lr")
        optimizer = c3.selectbox("Optimizer", ["adamw", "adam", "sgd"], key=f"{task}_opt")
        scheduler = c4.selectbox("LR schedule", ["cosine", "onecycle", "step", "exponential", "plateau", "cyclic", "none"],
                                 key=f"{task}_sched")
        c1, c2, c3, c4 = st.columns(4)
        loss = c1.selectbox("Loss", ["l1", "mse", "huber"], key=f"{task}_loss", disabled=task == "sex",
                            help="sex classification always uses binary cross-entropy")
        use_sex = c2.checkbox("Sex as an input", value=task == "boneage", disabled=task == "sex", key=f"{task}_use_sex")
        split = c3.selectbox("Validation split", ["stratified", "dataset"], key=f"{task}_split",
                             format_func={"stratified": "stratified sex x age", "dataset": "the folder's own CSVs"}.get)
        val_fraction = c4.slider("Validation share", 0.05, 0.5, 0.2, key=f"{task}_valfrac")
        c1, c2, c3, c4 = st.columns(4)
        holdout = c1.slider("Held-out test share", 0.0, 0.5, 0.0, key=f"{task}_holdout",
                            help="set aside before anything else: never trained or tuned on")
        init_from = c2.selectbox("Warm start from", ["(none)"] + [r.name for r in finished], key=f"{task}_init")
        freeze = c3.number_input("Freeze first N blocks", 0, 20, 0, key=f"{task}_freeze")
        patience = c4.number_input("Early stopping patience", 0, 100, 0, key=f"{task}_patience")
        c1, c2, c3, c4 = st.columns(4)
        progressive = c1.selectbox("Progressive resizing from (px)", ["off", 64, 96, 128, 192, 256, 384],
                                   key=f"{task}_progressive",
                                   help="early batches are trained smaller and grow in 16 px steps to the image "
                                        "size, which the last 30% of the run uses: more epochs in a time budget")
        bn_momentum = c2.number_input("BatchNorm momentum", 0.001, 1.0, 0.1, format="%.3f", key=f"{task}_bn",
                                      help="0.1 lets the running statistics follow radiographs quickly; "
                                           "EfficientNet-Lite0 ships TensorFlow's 0.01")
        drop_path = c3.number_input("Stochastic depth", 0.0, 0.9, 0.2, step=0.05, format="%.2f", key=f"{task}_droppath",
                                    help="share of samples that skip the last trunk block, scaled down to 0 at "
                                         "the first (EfficientNet-Lite0 only); lower fits faster in a short run")
        submitted = st.form_submit_button("Start training", type="primary")
    if not submitted:
        return None
    name = name.strip() or _default_name(task, arch)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}", name):
        st.error("Run names use letters, digits, '.', '-' and '_' only.")
        return None
    if pretrained and not model_info(arch).pretrained_available:
        st.error(f"No ImageNet weights on disk for {arch}: untick 'ImageNet weights' or put the file in "
                 f"{settings.workspace / 'weights'} (see the README).")
        return None
    pcfg = load_config(pp_name) if pp_name in saved else PreprocessConfig(size=int(size))
    cfg = TrainConfig(
        data=str(data_dir), out=str(settings.models_dir / name), task=task, arch=arch, pretrained=pretrained,
        use_sex=bool(use_sex) and task == "boneage", preprocess=pcfg.to_dict(), epochs=int(epochs),
        time_budget_min=float(budget) or None, batch_size=int(batch), lr=float(lr), optimizer=optimizer,
        scheduler=scheduler, loss=loss, init_from=None if init_from == "(none)" else init_from, freeze=int(freeze),
        split=split, val_fraction=float(val_fraction), holdout_fraction=float(holdout), patience=int(patience),
        workers=min(4, settings.workers), bn_momentum=float(bn_momentum), drop_path=float(drop_path),
        progressive_from=None if progressive == "off" else int(progressive),
    )
    try:
        run_dir = start_training(cfg)
    except (JobError, ValueError, RuntimeError) as exc:
        st.error(str(exc))
        return None
    st.toast(f"Started {name}{' on synthetic data' if synthetic else ''}")
    return run_dir


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(seconds)
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m {seconds % 60:02d}s"


def curves(history: list[dict], task: str, title: str = "") -> go.Figure:
    """Loss (left) and the validation headline metric (right) per epoch."""
    hist = pd.DataFrame(history)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "validation MAE (months)" if task == "boneage" else "validation AUC"))
    if not hist.empty:
        fig.add_scatter(x=hist["epoch"], y=hist["train_loss"], name="train loss", row=1, col=1)
        if "val_loss" in hist:
            fig.add_scatter(x=hist["epoch"], y=hist["val_loss"], name="validation loss", row=1, col=1)
        key = "val_mae" if task == "boneage" else "val_auc"
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
        st.markdown(f"**{run_dir.name}** · {icon} {s} · {p.get('device', '')}")
        if p.get("message"):
            (st.error if s in ("failed", "diverged") else st.caption)(p["message"])
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
                request_cancel(run_dir)
                st.toast("Cancel requested: the run stops after the current batch and keeps its checkpoint.")
            if c2.button("Force stop", key=f"kill-{run_dir.name}", help="only if cancel does not respond"):
                force_stop(run_dir)
        with st.expander("Log"):
            st.code(log_tail(run_dir) or "(no log: the run was started from the command line)", language=None)
        if live and s in FINAL_STATES + ("stopped",):
            st.rerun()  # leave fragment polling once the run ends

    _monitor()


def runs_table(task: str) -> pd.DataFrame:
    runs = list_runs(task=task)
    rows = []
    for r in runs:
        rows.append({
            "run": r.name, "status": r.status, "arch": r.arch,
            "epoch": f"{r.epoch or 0}/{r.epochs or '?'}",
            ("val MAE (mo)" if task == "boneage" else "val AUC"): r.headline,
            "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated)),
        })
    return pd.DataFrame(rows)


def new_run_and_pick(task: str, ds, empty_hint: str) -> tuple[Path, pd.DataFrame]:
    """Device banner, the 'new run' form and the run picker shared by the task pages.

    Stops the page with ``empty_hint`` while the task has no run; returns the picked run's
    folder and the runs table."""
    device_banner()
    table = runs_table(task)
    with st.expander(f"New {TASK_WORDS[task]} run", expanded=table.empty):
        started = train_form(task, ds.root, ds.synthetic)
        if started is not None:
            st.session_state[f"{task}_run"] = str(started)
            st.session_state[f"{task}_pick"] = started.name  # show the new run, not the last one picked
            table = runs_table(task)
    if table.empty:
        st.info(empty_hint)
        st.stop()
    names = table["run"].tolist()
    current = st.session_state.get(f"{task}_run")
    current_name = Path(current).name if current else names[0]
    pick = st.selectbox("Run", names, index=names.index(current_name) if current_name in names else 0,
                        key=f"{task}_pick")
    return get_settings().models_dir / pick, table
