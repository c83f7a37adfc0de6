"""One command that measures the GPU path, and a CPU smoke mode of the same script so it never rots.

    bash bench/gpu_check.sh [--smoke] [--out DIR]        # or: python bench/gpu_check.py ...

Why: bf16 autocast, channels_last, NCCL DDP, GPU embeddings and GPU prediction only run
when a GPU is lent, for minutes. This script is the one prepared command for that moment:
every step runs in its own process under its own timeout, inside one overall budget
(under 10 minutes on an H100/H200), nothing is downloaded, and a step that fails marks its
rows FAIL while the others still run. The steps:

1. cuda tests: the tests that skip without CUDA (a ``cuda`` marker or a skipif whose reason
   names CUDA/GPU), run with pytest (SKIP in smoke mode, where the GPU is hidden);
2. train step: ``bench/bench_train.py`` for EfficientNet-Lite0, ResNet-50 and ConvNeXt-Tiny
   (random init) at 256 and 512 px, bf16 autocast and channels_last, images/s;
3. torchrun train: ``python -m torch.distributed.run --standalone --nproc_per_node=1 -m h2a
   train`` (the command ``h2a.engine.jobs`` builds) for a few epochs, images/s of the last;
4. DDP step: the engine's own ``init_distributed`` + ``place_model(distributed=True)`` under
   torchrun (NCCL on a GPU, gloo on CPU): a DDP-wrapped bf16 channels_last training step,
   which ``h2a train`` never reaches at world size 1;
5. embeddings: ``bench/bench_embed_cluster.py --skip-full`` (ImageNet Lite0), images/s;
6. predict: ``bench/bench_predict.py`` on a full-resolution original from
   ``../shared/data/rsna-fullres`` as uploaded, end to end (CAM + PDF) and one forward, ms.

Data: the real radiographs, linked under new ids into a throw-away RSNA-layout folder
(GPU: full-resolution originals; smoke: the 100 px thumbnails), the synthetic demo when
neither is present. Prints one table (check | setting | figure | unit | status), writes it
to OUT/gpu_check.json and OUT/gpu_check.md, each step's output to OUT/logs/, and exits 1
when any row failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
FULLRES = SHARED_DATA / "rsna-fullres"
THUMBS = SHARED_DATA / "rsna-thumbs-100"
TRAIN_CSV, TRAIN_DIR = "boneage-training-dataset.csv", "boneage-training-dataset"
OK, FAIL, SKIP = "OK", "FAIL", "SKIP"
COLUMNS = ("check", "setting", "figure", "unit", "status")


@dataclass(frozen=True)
class Profile:
    """What one mode runs: the same steps, at GPU or at toy sizes."""

    name: str
    device: str
    data: Path  # source of the linked dataset
    images: int  # ids in the linked dataset
    archs: tuple[str, ...]
    sizes: tuple[int, ...]
    batch: int
    steps: int
    amp: str  # bench_train --amp; the precision the rows must report
    expect_amp: str
    ddp_arch: str
    ddp_size: int
    ddp_batch: int
    ddp_epochs: int
    embed_size: int
    embed_sample: int
    embed_batch: int
    predict_arch: str
    predict_size: int
    tta: int
    repeat: int
    workers: int
    train_together: bool  # all models in one bench_train process (smoke: fewer interpreter starts)
    budget_s: float  # the whole run, every step included
    timeouts: dict = field(default_factory=dict)  # step -> seconds (each also capped by what is left)


GPU = Profile(name="gpu", device="cuda", data=FULLRES, images=512,
              archs=("efficientnet_lite0", "resnet50", "convnext_tiny"), sizes=(256, 512), batch=32, steps=20,
              amp="bf16", expect_amp="bf16", ddp_arch="efficientnet_lite0", ddp_size=256, ddp_batch=64,
              ddp_epochs=3, embed_size=256, embed_sample=4096, embed_batch=256, predict_arch="efficientnet_lite0",
              predict_size=256, tta=8, repeat=5, workers=8, train_together=False, budget_s=570,
              timeouts={"cuda-tests": 150, "train": 80, "torchrun": 150, "ddp": 60, "embed": 90, "predict": 120})
SMOKE = Profile(name="smoke", device="cpu", data=THUMBS, images=48,
                archs=("efficientnet_lite0", "resnet50", "convnext_tiny"), sizes=(32, 64), batch=2, steps=1,
                amp="off", expect_amp="fp32", ddp_arch="efficientnet_lite0", ddp_size=32, ddp_batch=16,
                ddp_epochs=1, embed_size=32, embed_sample=32, embed_batch=16, predict_arch="efficientnet_lite0",
                predict_size=64, tta=2, repeat=1, workers=0, train_together=True, budget_s=600,
                timeouts={"cuda-tests": 120, "train": 120, "torchrun": 180, "ddp": 120, "embed": 120,
                          "predict": 180})


@dataclass
class Row:
    """One line of the table; ``key`` is stable across runs (what tests compare)."""

    key: str
    check: str
    setting: str
    figure: float | None = None
    unit: str = ""
    status: str = FAIL
    note: str = ""


@dataclass
class Step:
    """One check: its planned rows (all FAIL until measured) and how to measure them."""

    name: str
    rows: list[Row]
    run: Callable[[Context, list[Row]], None]


@dataclass
class Context:
    profile: Profile
    out: Path
    work: Path
    dataset: Path | None = None
    deadline: float = 0.0
    scale: float = 1.0  # --budget over the mode's own budget

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def smoke(self) -> bool:
        return self.profile.device == "cpu"

    def env(self) -> dict:
        """Children write into the throw-away workspace, never download, and (smoke) never see a GPU."""
        env = dict(os.environ, H2A_WORKSPACE=str(self.work / "workspace"),
                   H2A_MODELS_DIR=str(self.work / "workspace" / "models"), PYTHONUNBUFFERED="1",
                   HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env.pop("H2A_DATA_DIR", None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        if self.smoke:
            env.update(CUDA_VISIBLE_DEVICES="", H2A_DEVICE="cpu")
        return env

    def timeout(self, step: str) -> float:
        """The step's own limit (scaled with --budget), capped by what is left of the budget."""
        own = self.profile.timeouts.get(step, 60) * self.scale
        return max(0.0, min(own, self.deadline - time.monotonic()))


class StepFailed(RuntimeError):
    """A step's command failed, timed out or wrote no figures; the message is the row's note."""


# ---------------------------------------------------------------- running commands


def run_command(ctx: Context, name: str, cmd: list[str], timeout: float, env: dict | None = None) -> str:
    """Run ``cmd`` in its own process group under ``timeout``; its output goes to logs/NAME.log.

    On timeout the whole group (torchrun's workers, DataLoader workers) is ended. Returns the
    output; raises StepFailed with the last error line when it exits non-zero.
    """
    if timeout < 1:
        raise StepFailed("no time left in the budget")
    ctx.logs.mkdir(parents=True, exist_ok=True)
    log = ctx.logs / f"{name}.log"
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env or ctx.env(), start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            raise StepFailed(f"timed out after {timeout:.0f} s (log: {log.name})") from None
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise StepFailed(f"exit {proc.returncode}: {_last_error(text)} (log: {log.name})")
    return text


def _end_group(proc: subprocess.Popen) -> None:
    """TERM, then KILL, the process group this script started for one step."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"error|exception|assert|failed", ln, re.IGNORECASE):
            return ln[-300:]
    return lines[-1][-300:] if lines else "no output"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StepFailed(f"no figures written ({path.name}: {exc})") from exc


# ---------------------------------------------------------------- the data


def link_dataset(src: Path, n: int, dest: Path) -> Path:
    """An RSNA-layout folder of ``n`` ids linked round-robin to ``src``'s images, labels kept.

    Links, not copies: full-resolution originals cost no disk, and new ids make as many
    images as a bench needs from the few that exist.
    """
    with open(src / TRAIN_CSV, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (src / TRAIN_DIR / f"{r['id']}.png").is_file()]
    if not rows:
        raise StepFailed(f"no labelled images in {src}")
    (dest / TRAIN_DIR).mkdir(parents=True, exist_ok=True)
    with open(dest / TRAIN_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "boneage", "male"])
        for i in range(n):
            r = rows[i % len(rows)]
            new_id = 900000 + i
            (dest / TRAIN_DIR / f"{new_id}.png").symlink_to((src / TRAIN_DIR / f"{r['id']}.png").resolve())
            w.writerow([new_id, r["boneage"], r["male"]])
    return dest


def prepare_dataset(ctx: Context) -> Path:
    """The linked real images, or the synthetic demo where the shared data is absent."""
    dest = ctx.work / "dataset"
    if (ctx.profile.data / TRAIN_CSV).is_file():
        return link_dataset(ctx.profile.data, ctx.profile.images, dest)
    code = ("import sys; from pathlib import Path; from h2a.data.demo import generate_demo; "
            "generate_demo(Path(sys.argv[1]), n=int(sys.argv[2]), seed=0)")
    n = min(ctx.profile.images, 256)  # drawn, not linked: fewer, so the budget is not spent here
    run_command(ctx, "dataset", [sys.executable, "-c", code, str(dest), str(n)], 300 * ctx.scale)
    return dest


def upload_file() -> Path | None:
    """The first full-resolution original (what a user uploads), when the shared data is there."""
    files = sorted((FULLRES / TRAIN_DIR).glob("*.png")) if (FULLRES / TRAIN_DIR).is_dir() else []
    return files[0] if files else None


# ---------------------------------------------------------------- 1. CUDA-only tests


CUDA_MARK = re.compile(r"mark\.cuda\b|mark\.skipif\(.*(cuda|gpu)", re.IGNORECASE)


def cuda_test_files() -> list[Path]:
    """Test files with a CUDA marker or skipif (collecting only them keeps the step fast)."""
    return [p for p in sorted((REPO / "tests").glob("test_*.py")) if CUDA_MARK.search(p.read_text(errors="replace"))]


def _needs_cuda(item) -> bool:
    if item.get_closest_marker("cuda") is not None:
        return True
    return any(m.name == "skipif" and re.search(r"cuda|gpu", str(m.kwargs.get("reason", "")), re.IGNORECASE)
               for m in item.iter_markers())


def pytest_collection_modifyitems(config, items) -> None:
    """pytest plugin hook (``-p gpu_check`` with H2A_CUDA_ONLY=1): keep only the CUDA-only tests."""
    if os.environ.get("H2A_CUDA_ONLY") != "1":
        return
    keep = [i for i in items if _needs_cuda(i)]
    drop = [i for i in items if not _needs_cuda(i)]
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


def junit_counts(path: Path) -> dict[str, int]:
    """passed / skipped / failed test cases in a pytest JUnit XML file."""
    counts = {"passed": 0, "skipped": 0, "failed": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def run_cuda_tests(ctx: Context, rows: list[Row]) -> None:
    xml = ctx.work / "cuda-tests.xml"
    env = dict(ctx.env(), H2A_CUDA_ONLY="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), ctx.env()["PYTHONPATH"]]))
    env.pop("H2A_WORKSPACE", None)  # the tests' conftest makes its own
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "gpu_check", "-o", "addopts=", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-rs", *map(str, cuda_test_files())]
    try:
        run_command(ctx, "cuda-tests", cmd, ctx.timeout("cuda-tests"), env)
    except StepFailed:
        if not xml.exists():
            raise
    n = junit_counts(xml)
    total = sum(n.values())
    row = rows[0]
    row.setting = f"{total} CUDA-only tests ({', '.join(p.name for p in cuda_test_files())})"
    row.figure, row.unit = float(n["passed"]), f"passed of {total}"
    if total == 0:
        row.status, row.note = FAIL, "no CUDA-only test was selected"
    elif n["failed"]:
        row.status, row.note = FAIL, f"{n['failed']} failed (log: cuda-tests.log)"
    elif n["skipped"]:
        row.status = SKIP if ctx.smoke and n["skipped"] == total else FAIL
        row.note = "skipped: no GPU visible" + ("" if ctx.smoke else " on the GPU run")
    else:
        row.status = OK


# ---------------------------------------------------------------- 2. training step per model and size


def train_command(ctx: Context, archs: tuple[str, ...], dest: Path) -> list[str]:
    p = ctx.profile
    return [sys.executable, "bench/bench_train.py", "--device", p.device, "--models", *archs,
            "--sizes", *map(str, p.sizes), "--batch-size", str(p.batch), "--steps", str(p.steps),
            "--amp", p.amp, "--channels-last", "on", "--workers", "0", "--json", str(dest)]


def run_train(ctx: Context, rows: list[Row], archs: tuple[str, ...]) -> None:
    name = "train-" + "-".join(archs)
    dest = ctx.work / f"{name}.json"
    run_command(ctx, name, train_command(ctx, archs, dest), ctx.timeout("train") * len(archs))
    results = {(r["arch"], r["size"]): r for r in _read_json(dest)["results"]}
    for row, (arch, size) in zip(rows, [(a, s) for a in archs for s in ctx.profile.sizes]):
        r = results.get((arch, size))
        if r is None:
            row.note = "no result at this size"
            continue
        row.setting = f"{arch} {size} px, {r['amp']} {'channels_last' if r['channels_last'] else 'NCHW'}, batch {r['batch']}"
        row.figure, row.unit = r["compute_img_s"], "img/s"
        wanted = r["amp"] == ctx.profile.expect_amp and r["channels_last"]
        row.status = OK if wanted else FAIL
        if not wanted:
            row.note = f"ran in {r['amp']}, channels_last {r['channels_last']} (wanted {ctx.profile.expect_amp} + channels_last)"


# ---------------------------------------------------------------- 3. torchrun training run


def torchrun_prefix(nproc: int = 1) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def torchrun_command(ctx: Context, run_dir: Path) -> list[str]:
    """What ``h2a.engine.jobs.build_command`` starts for several GPUs, at one process."""
    p = ctx.profile
    return [*torchrun_prefix(), "-m", "h2a", "train", "--data", str(ctx.dataset), "--out", str(run_dir),
            "--arch", p.ddp_arch, *pretrained_flag(p.ddp_arch), "--image-size", str(p.ddp_size),
            "--epochs", str(p.ddp_epochs), "--batch-size", str(p.ddp_batch), "--workers", str(p.workers),
            "--device", p.device, "--seed", "0"]


def pretrained_flag(arch: str) -> list[str]:
    """ImageNet weights only for Lite0 (bundled in a pip package); everything else random (offline)."""
    return ["--pretrained"] if arch == "efficientnet_lite0" else ["--no-pretrained"]


def run_torchrun(ctx: Context, rows: list[Row]) -> None:
    p = ctx.profile
    run_dir = ctx.work / "workspace" / "models" / "gpu-check-torchrun"
    run_command(ctx, "torchrun", torchrun_command(ctx, run_dir), ctx.timeout("torchrun"))
    meta, prog = _read_json(run_dir / "metadata.json"), _read_json(run_dir / "progress.json")
    last = meta["history"][-1]
    images = prog["batches"] * p.ddp_batch * prog["world_size"]
    row = rows[0]
    row.setting = (f"{p.ddp_arch} {last['train_size']} px, batch {p.ddp_batch}, {prog['world_size']} process, "
                   f"{meta['device']}, epoch {len(meta['history'])} of {len(meta['history'])}, data wait "
                   f"{100 * last['data_wait_share']:.0f}%")
    row.figure, row.unit = images / max(last["time_s"], 1e-9), "img/s"
    good = prog["status"] == "finished" and prog["world_size"] == 1 and _on_device(meta["device"], p.device)
    row.status = OK if good else FAIL
    if not good:
        row.note = f"status {prog['status']}, world size {prog['world_size']}, device {meta['device']}"


def _on_device(described: str, device: str) -> bool:
    """describe_device says 'CPU (n cores)' or 'NAME (cuda:0)'."""
    return ("cuda" in described) == (device == "cuda")


# ---------------------------------------------------------------- 4. DDP-wrapped step (NCCL / gloo)


def ddp_command(ctx: Context, dest: Path) -> list[str]:
    p = ctx.profile
    return [*torchrun_prefix(), str(Path(__file__).resolve()), "--ddp-step", str(dest), "--device", p.device,
            "--arch", p.ddp_arch, "--size", str(p.ddp_size), "--batch", str(p.ddp_batch), "--steps", str(p.steps),
            "--amp", p.amp]


def ddp_step(dest: Path, device_name: str, arch: str, size: int, batch: int, steps: int, amp: str = "auto") -> None:
    """Under torchrun: the engine's process group and DDP wrapper, timed over ``steps`` steps.

    ``h2a train`` joins a process group only when WORLD_SIZE > 1, so on a 1-GPU machine
    this is the only place NCCL and the DDP wrapper run at all.
    """
    import torch
    import torch.distributed as dist

    from h2a.device import describe_device, resolve_device
    from h2a.engine.builder import place_model
    from h2a.engine.config import TrainConfig
    from h2a.engine.distributed import init_distributed, leave_together
    from h2a.engine.optim import make_optimizer
    from h2a.models import create_model
    from h2a.settings import dist_env

    env = dist_env()
    cfg = TrainConfig(data="", out="", arch=arch, device=device_name, lr=1e-4, amp=amp)
    device = resolve_device(cfg.device, env.local_rank)
    if device.type == "cuda":  # what the trainer's _configure_device does first
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    init_distributed(cfg, enabled=True)
    try:
        model, net, adtype, channels_last = place_model(create_model(arch, "boneage", pretrained=False), cfg,
                                                        device, distributed=True)
        opt = make_optimizer(cfg, model.parameters())
        x = torch.randn(batch, 1, size, size, device=device).contiguous(memory_format=torch.channels_last)
        sex, y = torch.ones(batch, device=device), torch.zeros(batch, device=device)

        def step() -> float:
            with torch.autocast(device.type, dtype=adtype) if adtype is not None else nullcontext():
                out = net(x, sex)
            loss = (out.float() - y).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP's gradient all-reduce runs here
            opt.step()
            return float(loss)

        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        losses = [step() for _ in range(steps)]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        if env.is_main:
            dest.write_text(json.dumps({
                "backend": dist.get_backend(), "world_size": dist.get_world_size(), "device": describe_device(device),
                "ddp": isinstance(net, torch.nn.parallel.DistributedDataParallel),
                "amp": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(adtype, "fp32"),
                "channels_last": channels_last, "img_s": batch * steps * env.world_size / dt,
                "finite": all(map(math.isfinite, losses))}))
    finally:
        leave_together(True)


def run_ddp(ctx: Context, rows: list[Row]) -> None:
    p = ctx.profile
    dest = ctx.work / "ddp.json"
    run_command(ctx, "ddp", ddp_command(ctx, dest), ctx.timeout("ddp"))
    r = _read_json(dest)
    row = rows[0]
    row.setting = (f"{r['backend']}, world {r['world_size']}, {p.ddp_arch} {p.ddp_size} px, {r['amp']} "
                   f"{'channels_last' if r['channels_last'] else 'NCHW'}, batch {p.ddp_batch}")
    row.figure, row.unit = r["img_s"], "img/s"
    backend = "gloo" if ctx.smoke else "nccl"
    good = r["ddp"] and r["finite"] and r["backend"] == backend and r["amp"] == p.expect_amp and r["channels_last"]
    row.status = OK if good else FAIL
    if not good:
        row.note = f"wanted DDP over {backend}, {p.expect_amp}, channels_last, finite loss; got {r}"


# ---------------------------------------------------------------- 5. embedding throughput


def run_embed(ctx: Context, rows: list[Row]) -> None:
    p = ctx.profile
    dest = ctx.work / "embed.json"
    cmd = [sys.executable, "bench/bench_embed_cluster.py", "--data", str(ctx.dataset), "--size", str(p.embed_size),
           "--batch-size", str(p.embed_batch), "--sample", str(p.embed_sample), "--device", p.device,
           "--amp", p.amp, "--skip-full", "--json", str(dest)]
    run_command(ctx, "embed", cmd, ctx.timeout("embed"))
    r = _read_json(dest)
    s = r["embed_sample"]
    row = rows[0]
    row.setting = (f"ImageNet Lite0 {p.embed_size} px, {s['n']} images, batch {p.embed_batch}, "
                   f"{s.get('precision', 'amp ' + s['amp'])}, {r['device']}")
    row.figure, row.unit = s["images_per_s"], "img/s"
    good = _on_device(r["device"], p.device) and s["n"] > 0
    row.status = OK if good else FAIL
    if not good:
        row.note = f"ran on {r['device']}"


# ---------------------------------------------------------------- 6. predict latency


def predict_command(ctx: Context, dest: Path) -> list[str]:
    p = ctx.profile
    image = upload_file()
    return [sys.executable, "bench/bench_predict.py", "--arch", p.predict_arch, "--size", str(p.predict_size),
            "--tta", str(p.tta), "--repeat", str(p.repeat), "--batch", "0", "--device", p.device,
            "--data", str(ctx.dataset), "--workspace", str(ctx.work / "workspace"), "--json", str(dest),
            *(["--image", str(image)] if image is not None else [])]


def run_predict(ctx: Context, rows: list[Row]) -> None:
    p = ctx.profile
    dest = ctx.work / "predict.json"
    run_command(ctx, "predict", predict_command(ctx, dest), ctx.timeout("predict"))
    r = _read_json(dest)
    ms = r["ms"]
    h, w = r["image_shape"][:2]
    upload = f"{r['image']} ({w} x {h}, {r['image_bytes'] / 1e6:.1f} MB)"
    e2e = next(v for k, v in ms.items() if k.startswith("end to end"))
    forward = next(v for k, v in ms.items() if k.startswith("model"))
    rows[0].setting = f"{upload}, {r['arch']} {r['size']} px, TTA {r['tta']}, CAM + PDF, {r['device']}"
    rows[0].figure, rows[0].unit = e2e, "ms"
    rows[1].setting = f"one forward, {r['arch']} {r['size']} px, {r['device']}"
    rows[1].figure, rows[1].unit = forward, "ms"
    good = _on_device(r["device"], p.device)
    for row in rows:
        row.status = OK if good else FAIL
        row.note = "" if good else f"ran on {r['device']}"


# ---------------------------------------------------------------- plan, run, report


def plan(profile: Profile) -> list[Step]:
    """Every step with its rows, before anything runs (a step that dies leaves them FAIL)."""
    steps = [Step("cuda-tests", [Row("cuda-tests", "cuda tests", "CUDA-only tests")], run_cuda_tests)]
    groups = [profile.archs] if profile.train_together else [(arch,) for arch in profile.archs]
    for archs in groups:
        rows = [Row(f"train:{arch}:{size}", "train step", f"{arch} {size} px") for arch in archs for size in profile.sizes]
        steps.append(Step("train-" + "-".join(archs), rows, lambda ctx, rs, a=archs: run_train(ctx, rs, a)))
    steps += [
        Step("torchrun", [Row("torchrun", "torchrun train", f"{profile.ddp_arch} {profile.ddp_size} px")],
             run_torchrun),
        Step("ddp", [Row("ddp-step", "DDP step", f"{profile.ddp_arch} {profile.ddp_size} px")], run_ddp),
        Step("embed", [Row("embeddings", "embeddings", f"Lite0 {profile.embed_size} px")], run_embed),
        Step("predict", [Row("predict-e2e", "predict latency", "full-resolution upload"),
                         Row("predict-forward", "predict forward", "one forward")], run_predict),
    ]
    return steps


def expected_keys(profile: Profile) -> list[str]:
    return [row.key for step in plan(profile) for row in step.rows]


def run_checks(ctx: Context, steps: list[Step], prepare: Callable[[Context], Path] | None = prepare_dataset,
               say: Callable[[str], None] = print) -> list[Row]:
    """Run every step in turn; an exception marks that step's rows FAIL with its message."""
    ctx.deadline = time.monotonic() + ctx.profile.budget_s
    prep_error = None
    if prepare is not None:
        try:
            ctx.dataset = prepare(ctx)
        except Exception as exc:  # noqa: BLE001 - reported in every row that needed it
            prep_error = f"dataset: {exc}"
    rows: list[Row] = []
    for step in steps:
        t0 = time.monotonic()
        try:
            if prep_error is not None and step.name != "cuda-tests":
                raise StepFailed(prep_error)
            step.run(ctx, step.rows)
        except Exception as exc:  # noqa: BLE001 - one step's failure must not stop the others
            for row in step.rows:
                row.status = FAIL
                row.note = row.note or (str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}")
        say(f"[{time.monotonic() - t0:6.1f} s] {step.name}: "
            + ", ".join(f"{r.status}" + (f" ({r.note})" if r.note else "") for r in step.rows))
        rows += step.rows
    return rows


def format_figure(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.3f}"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r.check, r.setting.replace("|", "/"), format_figure(r.figure), r.unit, r.status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """The table's rows back as dicts of the five columns (what a reader of the .md sees)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def text_table(rows: list[Row]) -> str:
    cells = [COLUMNS] + [(r.check, r.setting, format_figure(r.figure), r.unit, r.status) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    fmt = lambda c: "  ".join(s.rjust(w) if i == 2 else s.ljust(w) for i, (s, w) in enumerate(zip(c, widths)))
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths), *map(fmt, cells[1:])])


def write_report(out: Path, profile: Profile, rows: list[Row], seconds: float) -> None:
    doc = {"mode": profile.name, "seconds": round(seconds, 1), "columns": list(COLUMNS),
           "failed": sum(r.status == FAIL for r in rows), "rows": [asdict(r) for r in rows]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=2))
    notes = [f"- {r.check} ({r.setting}): {r.note}" for r in rows if r.note]
    (out / "gpu_check.md").write_text(f"# H2A GPU check ({profile.name}, {seconds:.0f} s)\n\n{markdown_table(rows)}\n"
                                      + ("\n" + "\n".join(notes) + "\n" if notes else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU at toy sizes (CI): the same steps, GPU hidden")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "gpu_check",
                    help="folder for gpu_check.json, gpu_check.md and logs/ (default: bench/out/gpu_check)")
    ap.add_argument("--keep", action="store_true", help="keep the throw-away workspace (dataset, caches, runs)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run; each step's limit scales with it (default: 570, smoke 600)")
    ap.add_argument("--ddp-step", type=Path, default=None, help=argparse.SUPPRESS)  # the torchrun worker
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--arch", default="efficientnet_lite0", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--amp", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_step is not None:
        ddp_step(args.ddp_step, args.device, args.arch, args.size, args.batch, args.steps, args.amp)
        return 0

    profile = SMOKE if args.smoke else GPU
    if args.budget is not None:
        profile = replace(profile, budget_s=args.budget)
    out = args.out.resolve()
    if (out / "logs").is_dir():
        shutil.rmtree(out / "logs")
    work = Path(tempfile.mkdtemp(prefix="h2a-gpu-check-"))
    ctx = Context(profile, out, work, scale=profile.budget_s / (SMOKE if args.smoke else GPU).budget_s)
    print(f"H2A GPU check, {profile.name} mode: work in {work}, report in {out}", flush=True)
    t0 = time.monotonic()
    try:
        rows = run_checks(ctx, plan(profile), say=lambda m: print(m, flush=True))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - t0
    write_report(out, profile, rows, seconds)
    print(f"\n{text_table(rows)}\n")
    for r in rows:
        if r.note:
            print(f"note: {r.check} / {r.setting}: {r.note}")
    failed = sum(r.status == FAIL for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} rows OK or skipped as expected, {failed} failed, {seconds:.0f} s; "
          f"written to {out / 'gpu_check.md'} and gpu_check.json", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
