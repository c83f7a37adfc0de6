"""bench/gpu_check.sh: the one prepared command for a lent GPU, kept from rotting by its CPU smoke mode.

The smoke run is the real script end to end (CUDA tests, bench_train for three models,
torchrun, a DDP step over gloo, embeddings, predict on a full-resolution upload) at toy
sizes; the other tests pin what the GPU mode would run, since no GPU is here to run it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FULLRES, REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


gc = _gpu_check()


@pytest.mark.timeout(1500)
def test_smoke_mode_runs_every_check_and_writes_one_table(tmp_path: Path) -> None:
    out = tmp_path / "report"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(SCRIPT), "--smoke", "--out", str(out), "--budget", "1200"], check=False,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1400)
    report = json.loads((out / "gpu_check.json").read_text())
    rows = report["rows"]
    failed = [(r["key"], r["note"]) for r in rows if r["status"] == gc.FAIL]
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-4000:], proc.stderr[-2000:])
    assert [r["key"] for r in rows] == gc.expected_keys(gc.SMOKE)
    assert report["mode"] == "smoke" and report["failed"] == 0

    cuda = rows[0]
    assert cuda["status"] == gc.SKIP and cuda["figure"] == 0  # the GPU is hidden in smoke mode
    assert int(cuda["unit"].split()[-1]) >= 2  # test_cam's and test_embeddings' CUDA tests were selected
    for r in rows[1:]:
        assert r["status"] == gc.OK, r
        assert r["figure"] is not None and r["figure"] > 0, r
    train = [r for r in rows if r["key"].startswith("train:")]
    assert len(train) == 6 and all("fp32 channels_last" in r["setting"] for r in train)
    assert {r["key"].split(":")[1] for r in train} == {"efficientnet_lite0", "resnet50", "convnext_tiny"}
    ddp = next(r for r in rows if r["key"] == "ddp-step")
    assert ddp["setting"].startswith("gloo, world 1")
    if FULLRES.is_dir():  # the upload is a full-resolution original, as uploaded
        e2e = next(r for r in rows if r["key"] == "predict-e2e")
        assert "as uploaded" in e2e["setting"] and e2e["unit"] == "ms"

    # the Markdown table reads back as the same rows; the printed table ends the output
    md = gc.parse_markdown_table((out / "gpu_check.md").read_text())
    assert [(m["check"], m["status"]) for m in md] == [(r["check"], r["status"]) for r in rows]
    assert all(m["figure"] == gc.format_figure(r["figure"]) for m, r in zip(md, rows))
    assert "check" in proc.stdout and "12 of 12 rows OK" in proc.stdout
    assert (out / "logs" / "torchrun.log").read_text().startswith("$ ")


def test_a_failing_step_marks_only_its_rows_and_the_rest_still_run(tmp_path: Path) -> None:
    ran = []

    def broken(ctx, rows):
        ran.append("broken")
        raise gc.StepFailed("exit 1: CUDA error: no kernel image")

    def fine(ctx, rows):
        ran.append("fine")
        rows[0].figure, rows[0].unit, rows[0].status = 12.5, "img/s", gc.OK

    steps = [gc.Step("a", [gc.Row("a1", "first", "x"), gc.Row("a2", "first", "y")], broken),
             gc.Step("b", [gc.Row("b1", "second", "z")], fine)]
    ctx = gc.Context(gc.SMOKE, tmp_path, tmp_path)
    rows = gc.run_checks(ctx, steps, prepare=None, say=lambda m: None)
    assert ran == ["broken", "fine"]
    assert [r.status for r in rows] == [gc.FAIL, gc.FAIL, gc.OK]
    assert rows[0].note == "exit 1: CUDA error: no kernel image"
    gc.write_report(tmp_path, gc.SMOKE, rows, 1.0)
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["failed"] == 2
    md = gc.parse_markdown_table((tmp_path / "gpu_check.md").read_text())
    assert [m["status"] for m in md] == ["FAIL", "FAIL", "OK"] and md[2]["figure"] == "12.5"


def test_a_step_that_would_overrun_the_budget_is_not_started(tmp_path: Path) -> None:
    ctx = gc.Context(gc.SMOKE, tmp_path, tmp_path)
    ctx.deadline = 0.0  # already spent
    with pytest.raises(gc.StepFailed, match="no time left"):
        gc.run_command(ctx, "late", [sys.executable, "-c", "print(1)"], ctx.timeout("train"))


def test_a_step_past_its_timeout_is_ended_with_its_children(tmp_path: Path) -> None:
    ctx = gc.Context(gc.SMOKE, tmp_path, tmp_path)
    child = tmp_path / "child.pid"
    with pytest.raises(gc.StepFailed, match="timed out"):  # a launcher (torchrun) and its worker
        gc.run_command(ctx, "slow", ["bash", "-c", f"sleep 300 & echo $! > {child}; wait"], 5)
    pid = int(child.read_text())
    for _ in range(100):  # the grandchild went with its group (a zombie until someone reaps it counts as gone)
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_gpu_mode_runs_what_the_issue_asks_for() -> None:
    """What a lent GPU will run (no GPU here): bf16 + channels_last at 256 and 512 px for
    Lite0, ResNet-50 and ConvNeXt-Tiny, a 1-process torchrun, NCCL DDP, everything on
    CUDA, ImageNet weights only where they ship in a package, within 10 minutes."""
    g = gc.GPU
    ctx = gc.Context(g, Path("/tmp/out"), Path("/tmp/work"), dataset=Path("/tmp/work/dataset"))
    assert g.budget_s < 600 and g.device == "cuda" and g.expect_amp == "bf16"
    assert set(g.archs) == {"efficientnet_lite0", "resnet50", "convnext_tiny"} and g.sizes == (256, 512)
    for arch in g.archs:
        cmd = gc.train_command(ctx, (arch,), Path("x.json"))
        joined = " ".join(cmd)
        assert "--device cuda" in joined and "--amp bf16" in joined and "--channels-last on" in joined
        assert "--sizes 256 512" in joined
    run = gc.torchrun_command(ctx, Path("/tmp/run"))
    assert run[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m"]
    assert run[6:8] == ["h2a", "train"] and run[run.index("--device") + 1] == "cuda"
    assert gc.pretrained_flag("efficientnet_lite0") == ["--pretrained"]
    assert gc.pretrained_flag("resnet50") == gc.pretrained_flag("convnext_tiny") == ["--no-pretrained"]
    ddp = gc.ddp_command(ctx, Path("d.json"))
    assert "--nproc_per_node=1" in ddp and ddp[ddp.index("--device") + 1] == "cuda"
    predict = gc.predict_command(ctx, Path("p.json"))
    assert predict[predict.index("--device") + 1] == "cuda"
    if FULLRES.is_dir():
        assert Path(predict[predict.index("--image") + 1]).parent.parent == FULLRES
    # every step's own limit fits in the budget on its own
    assert all(t <= g.budget_s for t in g.timeouts.values())
    assert ctx.env()["HF_HUB_OFFLINE"] == "1"  # nothing downloads (the GPU machine has no internet)
    assert gc.Context(gc.SMOKE, Path("/tmp/out"), Path("/tmp/work")).env()["CUDA_VISIBLE_DEVICES"] == ""
