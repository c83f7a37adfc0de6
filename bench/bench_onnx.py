"""PyTorch against its ONNX export (onnxruntime, CPU): the same answers, and what each costs.

    .venv/bin/python bench/bench_onnx.py --model models/NAME
    .venv/bin/python bench/bench_onnx.py --model RUN --data ../shared/data/rsna-thumbs-100 --split holdout

Exports the run to a temporary file (the run folder is left alone; ``--onnx FILE`` uses an
existing export instead), then:

* equality: every image of the split through both, the same uint8 cache rows and the same
  ``array_input``; prints max and mean |difference| in months (P(male) for a sex run) and
  in raw units;
* latency: batch 1 and batch 32, median ms per batch over --repeats interleaved rounds
  (after warm-up), with the ratio onnx/torch; both use the same number of threads.

Not a test: the figures depend on the machine and its load. The CPU's name is printed.
On a machine busy with something else, pass ``--threads 1``: torch's OpenMP threads spin
while they wait for a core, which can make its batch-1 figure 100x worse than it is.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from h2a.data.transforms import array_input
from h2a.run import resolve_run
from h2a.inference.evaluate import split_images
from h2a.inference.loading import LoadedRun, load_run
from h2a.inference.onnx_export import OnnxRunner, export_onnx

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rsna-thumbs-100"


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@torch.inference_mode()
def torch_raw(run: LoadedRun, x: torch.Tensor, sex: np.ndarray) -> np.ndarray:
    s = torch.from_numpy(sex) if run.model.use_sex else None
    return run.model(x, s).float().numpy()


def equality(run: LoadedRun, runner: OnnxRunner, u8: np.ndarray, sex: np.ndarray, batch: int = 32) -> dict:
    """Both backends over every image; differences after ``run.to_output`` and in raw units."""
    ref, got = np.empty(len(u8), np.float32), np.empty(len(u8), np.float32)
    for start in range(0, len(u8), batch):
        stop = min(len(u8), start + batch)
        x = array_input(u8[start:stop], run.norm, run.device)
        ref[start:stop] = torch_raw(run, x, sex[start:stop])
        got[start:stop] = runner.forward(x, sex[start:stop])[0]
    out = np.abs(run.to_output(got) - run.to_output(ref))
    return {"n": len(u8), "max": float(out.max()), "mean": float(out.mean()),
            "max_raw": float(np.abs(got - ref).max())}


def latency(run: LoadedRun, runner: OnnxRunner, u8: np.ndarray, sex: np.ndarray, batch: int,
            repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median ms per forward pass of a ``batch``-image input: (torch, onnx), rounds interleaved
    so a load change on the machine hits both alike."""
    idx = np.arange(batch) % len(u8)
    x, s = array_input(u8[idx], run.norm, run.device), sex[idx]
    x_np = x.contiguous().numpy()
    for _ in range(warmup):
        torch_raw(run, x, s)
        runner.forward(x_np, s)
    t_ms, o_ms = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch_raw(run, x, s)
        t1 = time.perf_counter()
        runner.forward(x_np, s)
        t2 = time.perf_counter()
        t_ms.append(1e3 * (t1 - t0))
        o_ms.append(1e3 * (t2 - t1))
    return statistics.median(t_ms), statistics.median(o_ms)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="run folder or name")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="dataset folder (default: %(default)s)")
    p.add_argument("--split", choices=["all", "validation", "holdout"], default="holdout")
    p.add_argument("--onnx", type=Path, default=None, help="an existing export of the run (default: export now)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per batch size (median)")
    p.add_argument("--threads", type=int, default=None, help="threads for both backends (default: torch's)")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    run = load_run(resolve_run(args.model))
    print(f"run {run.path.name}: {run.task}, {run.meta['model']['name']} @ {run.preprocess.size} px, "
          f"sex input {'yes' if run.model.use_sex else 'no'}")
    print(f"CPU: {cpu_name()}, {threads} thread(s) for both backends; torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx
        if path is None:
            info = export_onnx(run.path, Path(tmp) / "model.onnx")
            path = Path(info["path"])
            print(f"export: {info['size_bytes'] / 1e6:.1f} MB, opset {info['opset']}, {info['seconds']:.1f} s, "
                  f"random-input check max |raw difference| {info['max_abs_diff_raw']:.2e}")
        runner = OnnxRunner(path, threads=threads)

        images = split_images(run, args.data, args.split)
        u8 = images.cache.take(images.rows)
        sex = images.labelled["male"].astype(bool).to_numpy().astype(np.float32)
        eq = equality(run, runner, u8, sex)
        unit = "months" if run.task == "boneage" else "P(male)"
        print(f"equality on {eq['n']} {images.split} images of {images.data_path.name}: |onnx - torch| "
              f"max {eq['max']:.5f} {unit}, mean {eq['mean']:.6f} {unit} (max raw {eq['max_raw']:.2e})")

        for batch in (1, 32):
            t_ms, o_ms = latency(run, runner, u8, sex, batch, args.repeats)
            print(f"latency batch {batch:>2}: torch {t_ms:8.2f} ms, onnx {o_ms:8.2f} ms, onnx/torch "
                  f"{o_ms / t_ms:.2f} (median of {args.repeats}; {1e3 * batch / t_ms:.0f} vs "
                  f"{1e3 * batch / o_ms:.0f} images/s)")


if __name__ == "__main__":
    main()
