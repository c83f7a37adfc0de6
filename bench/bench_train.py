"""Training throughput per model and image size on the current device, and the share of
step time spent waiting for data when batches come from the tensor cache.

    .venv/bin/python bench/bench_train.py --data ../shared/data/rsna-thumbs-100 \
        --models tiny_cnn efficientnet_lite0 resnet18 --sizes 128 --steps 8

Prints one line per (model, size): images/s of a full training step on random tensors
(compute only), images/s through the real DataLoader path, and data-wait share
(target < 10% with the cache). The step uses the engine's precision and memory format
(CUDA: bf16 autocast + channels_last; CPU: float32 channels_last).

    .venv/bin/python bench/bench_train.py --models efficientnet_lite0 --sizes 112 128 --cpu-variants

On CPU, --cpu-variants times every (precision, memory format) pair, with ratios against
float32 NCHW measured in the same run: how the engine's CPU choice was made.

    .venv/bin/python bench/bench_train.py --models efficientnet_lite0 --sizes 128 --batch-size 32 16 64 --rounds 3

Several batch sizes are timed over the same number of images each (--steps at the first
batch size), --rounds times in turn, and the median printed with its ratio against the
first: on small CPUs the fastest batch per image is not the largest (cache-bound).

    .venv/bin/python bench/bench_train.py --device cuda --models resnet50 --sizes 256 512 \
        --amp bf16 --channels-last on --json out.json

--amp and --channels-last pin what is timed (default: the engine's own choice, as above);
--json writes every result with the precision and memory format it actually ran in, for
bench/gpu_check.py's table.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader


from h2a.data.cache import CachedImageDataset, TensorCache, build_cache  # noqa: E402
from h2a.data.datasets import load_dataset  # noqa: E402
from h2a.device import choose_amp, describe_device, resolve_device, use_channels_last  # noqa: E402
from h2a.data.transforms import input_norm, to_input  # noqa: E402
from h2a.models import create_model  # noqa: E402
from h2a.data.preprocess import PreprocessConfig
from h2a.data.transforms import augmentation  # noqa: E402
from h2a.engine.config import TrainConfig
from h2a.engine.optim import make_optimizer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dtype_name(adtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(adtype, "fp32")


def bench(arch: str, size: int, cache: TensorCache | None, steps: int, batch: int, workers: int, device: torch.device,
          adtype: torch.dtype | None, channels_last: bool | None = None) -> dict:
    """One (model, size, batch): images/s of a full step; ``adtype`` None = float32,
    ``channels_last`` None = the engine's choice for that precision."""
    model = create_model(arch, "boneage", pretrained=False).to(device)
    if channels_last is None:
        channels_last = use_channels_last(device, adtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(TrainConfig(data="", out="", lr=1e-4), model.parameters())
    cfg = PreprocessConfig(size=size)
    norm = input_norm(arch, cfg)

    def step(u8: torch.Tensor, sex: torch.Tensor, y: torch.Tensor) -> None:
        x = to_input(u8.to(device, non_blocking=True), norm)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(device.type, dtype=adtype) if adtype is not None else nullcontext()
        with ctx:
            out = model(x, sex.to(device))
        loss = (out.float() - y.to(device)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    u8 = torch.randint(0, 255, (batch, 1, size, size), dtype=torch.uint8)
    sex, y = torch.ones(batch), torch.zeros(batch)
    step(u8, sex, y)  # warm-up (cudnn autotune, allocator)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(u8, sex, y)
    _sync(device)
    compute = batch * steps / (time.perf_counter() - t0)
    result = {"arch": arch, "size": size, "batch": batch, "amp": dtype_name(adtype), "channels_last": channels_last,
              "compute_img_s": compute}
    if cache is not None:
        rows = np.flatnonzero(cache.ok)[: batch * (steps + 1)]
        dset = CachedImageDataset(cache, rows, targets=np.zeros(len(rows)), sex=np.ones(len(rows)),
                                  transform=augmentation(cfg))
        loader = DataLoader(dset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                            pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        it = iter(loader)
        b = next(it)
        step(b["image"], b["sex"], b["target"])
        _sync(device)
        wait = 0.0
        n = 0
        t0 = time.perf_counter()
        t_fetch = time.perf_counter()
        for b in it:
            wait += time.perf_counter() - t_fetch
            step(b["image"], b["sex"], b["target"])
            _sync(device)
            n += len(b["image"])
            t_fetch = time.perf_counter()
        total = time.perf_counter() - t0
        result.update(loader_img_s=n / total, data_wait_share=wait / total)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="dataset folder for the DataLoader measurement")
    p.add_argument("--models", nargs="+", default=["tiny_cnn", "efficientnet_lite0", "resnet18"])
    p.add_argument("--sizes", nargs="+", type=int, default=[128])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, nargs="+", default=[32],
                   help="one or more; each timed over the same number of images")
    p.add_argument("--rounds", type=int, default=1, help="time every configuration this many times in turn; "
                   "the median is printed (machines with noisy neighbours)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default=None,
                   help="autocast as the engine's --amp: auto = bf16 on GPU only (default), bf16 also on CPU, off")
    p.add_argument("--cpu-bf16", action="store_true", help="the same as --amp bf16 (kept for old command lines)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                   help="memory format: auto = the engine's choice for the precision (default)")
    p.add_argument("--json", type=Path, default=None, help="also write the results (and device) to this JSON file")
    p.add_argument("--cpu-variants", action="store_true",
                   help="on CPU: time fp32/bf16 x NCHW/NHWC, ratios vs fp32 NCHW (no DataLoader pass)")
    args = p.parse_args()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    print(f"device: {describe_device(device)}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"batch {' '.join(map(str, args.batch_size))}; DataLoader workers {args.workers}")
    if args.cpu_variants and device.type == "cpu":
        for arch in args.models:
            for size in args.sizes:
                base = None
                for bf16, nhwc in ((False, False), (False, True), (True, False), (True, True)):
                    r = bench(arch, size, None, args.steps, args.batch_size[0], 0, device,
                              torch.bfloat16 if bf16 else None, nhwc)
                    base = base or r["compute_img_s"]
                    label = f"{'bf16' if bf16 else 'fp32'} {'NHWC' if nhwc else 'NCHW'}"
                    print(f"{arch:<20} {size:>4} px  {label}  {r['compute_img_s']:7.1f} img/s "
                          f"(x{r['compute_img_s'] / base:4.2f} vs fp32 NCHW)", flush=True)
        return
    amp_mode = args.amp or ("bf16" if args.cpu_bf16 else "auto")
    adtype, why = choose_amp(device, amp_mode)
    print(f"precision: {why} (--amp {amp_mode}, the rule training's --amp uses)", flush=True)
    channels_last = {"auto": None, "on": True, "off": False}[args.channels_last]
    # One cache per size, opened once: every (model, batch, round) reads the same one.
    ds = load_dataset(args.data) if args.data is not None else None
    caches = {size: build_cache(ds, PreprocessConfig(size=size)) if ds is not None else None for size in args.sizes}
    configs = [(arch, size, batch) for arch in args.models for size in args.sizes for batch in args.batch_size]
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    for _ in range(max(1, args.rounds)):
        for arch, size, batch in configs:
            steps = max(2, round(args.steps * args.batch_size[0] / batch))
            runs[(arch, size, batch)].append(
                bench(arch, size, caches[size], steps, batch, args.workers, device, adtype, channels_last))
    base = None
    results = []
    for (arch, size, batch), rs in runs.items():
        r = {k: float(np.median([x[k] for x in rs])) for k in rs[0] if isinstance(rs[0][k], float)}
        results.append({**rs[0], **r, "rounds": len(rs)})
        base = base or r["compute_img_s"]
        line = (f"{arch:<20} {size:>4} px  batch {batch:>3}  {rs[0]['amp']} "
                f"{'NHWC' if rs[0]['channels_last'] else 'NCHW'}  compute {r['compute_img_s']:8.1f} img/s "
                f"(x{r['compute_img_s'] / base:5.2f} vs first)")
        if "loader_img_s" in r:
            line += f"  with cache+DataLoader {r['loader_img_s']:8.1f} img/s  data wait {100 * r['data_wait_share']:4.1f}%"
        print(line, flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": describe_device(device), "torch": torch.__version__,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
