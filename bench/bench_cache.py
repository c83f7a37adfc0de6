"""Benchmark the tensor cache: build rate, and cached epoch vs decode-every-epoch.

Not a test: it prints figures. Default data are the real RSNA samples in
``../shared/data`` (11,005 100x100 thumbnails and 54 full-resolution radiographs).

    .venv/bin/python bench/bench_cache.py
    .venv/bin/python bench/bench_cache.py --data ../shared/data/rsna-fullres --size 512
    .venv/bin/python bench/bench_cache.py --limit 2000 --workers 2
    python bench/make_scale_dataset.py --n 12611 --out /tmp/h2a-scale
    .venv/bin/python bench/bench_cache.py --data /tmp/h2a-scale --limit 1000 --size 256 --size 512 --build-only

"Epoch" here means producing every image once as normalised float32 tensors in batches
of 64 (what the training loop consumes). The cache side reads uint8 rows from the
memmap; the decode side runs imageio + prepare on every file, in this process. Both
produce the same tensors (checked). The cache pages are usually warm in the OS page cache
right after a build, as they are on a real second epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

from h2a.data import datasets
from h2a.data.cache import CachedImageDataset, build_cache
from h2a.data.preprocess import PreprocessConfig, prepare_file
from h2a.data.transforms import input_norm, to_input
from h2a.settings import get_settings

DATA = REPO.parent / "shared" / "data"
DEFAULT_SETS = [DATA / "rsna-thumbs-100", DATA / "rsna-fullres"]
BATCH = 64
ARCH = "efficientnet_lite0"  # whose input normalisation the timings include


def model_input(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """The engine's own uint8 -> model-input transform, for ARCH."""
    return to_input(x, input_norm(ARCH, cfg))


def limited(ds, limit: int | None):
    """The first ``limit`` rows as a dataset (own fingerprint, so its own cache)."""
    if not limit or limit >= len(ds.meta):
        return ds
    meta = ds.meta.iloc[:limit].reset_index(drop=True)
    try:
        return dataclasses.replace(ds, meta=meta, problems=[], _fingerprint=None)
    except (TypeError, ValueError):
        return SimpleNamespace(name=ds.name, root=ds.root, meta=meta,
                               fingerprint=f"{ds.fingerprint}-first{limit}")


def cache_epoch(cache, cfg) -> tuple[float, float, torch.Tensor]:
    """One pass over the memmap in batches -> normalised tensors.

    Returns (seconds reading uint8 batches, seconds normalising, first normalised batch).
    """
    read_s = norm_s = 0.0
    first = None
    for start in range(0, len(cache), BATCH):
        t0 = time.perf_counter()
        x = torch.from_numpy(np.array(cache.images[start:start + BATCH])).unsqueeze(1)
        t1 = time.perf_counter()
        y = model_input(x, cfg)
        norm_s += time.perf_counter() - t1
        read_s += t1 - t0
        if first is None:
            first = y
    return read_s, norm_s, first


def loader_epoch(cache, cfg) -> float:
    """Same through CachedImageDataset + DataLoader (no augmentation, main process)."""
    data = CachedImageDataset(cache, np.arange(len(cache)))
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False, num_workers=0)
    t0 = time.perf_counter()
    for batch in loader:
        model_input(batch["image"], cfg)
    return time.perf_counter() - t0


def decode_epoch(paths: list[str], cfg) -> tuple[float, float, torch.Tensor]:
    """Decode + prepare every file each epoch (single process), same output as the cache.

    Returns (seconds decoding+preparing to uint8 batches, seconds normalising, first batch).
    """
    dec_s = norm_s = 0.0
    first = None
    for start in range(0, len(paths), BATCH):
        t0 = time.perf_counter()
        arrays = []
        for p in paths[start:start + BATCH]:
            try:
                arrays.append(prepare_file(p, cfg))
            except Exception:
                arrays.append(np.zeros((cfg.size, cfg.size), np.uint8))
        x = torch.from_numpy(np.stack(arrays)).unsqueeze(1)
        t1 = time.perf_counter()
        y = model_input(x, cfg)
        norm_s += time.perf_counter() - t1
        dec_s += t1 - t0
        if first is None:
            first = y
    return dec_s, norm_s, first


def bench_headers(ds, tmp: Path, workers: int) -> None:
    scan = getattr(datasets, "scan_headers", None)
    if scan is None:
        print("  header scan:         (h2a.data.datasets.scan_headers not available; skipped)")
        return
    db = tmp / "headers.sqlite"
    n = int(ds.meta["path"].notna().sum())
    try:
        t0 = time.perf_counter()
        scan(ds, db_path=db, workers=max(workers, 4))
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        scan(ds, db_path=db, workers=max(workers, 4))
        warm = time.perf_counter() - t0
    except TypeError as exc:  # a different signature than expected: say so, do not crash
        print(f"  header scan:         skipped ({exc})")
        return
    print(f"  header scan:         {n / cold:10.0f} img/s cold ({cold:.2f} s), "
          f"{n / warm:10.0f} img/s from the header DB ({warm:.2f} s)")


def bench_one(root: Path, size: int, limit: int | None, workers: int, keep: Path | None,
              build_only: bool = False) -> None:
    t0 = time.perf_counter()
    ds = limited(datasets.load_dataset(root), limit)
    load_s = time.perf_counter() - t0
    has_path = ds.meta["path"].notna()
    paths = [str(p) for p in ds.meta.loc[has_path, "path"]]
    n = len(paths)
    cfg = PreprocessConfig(size=size, flip=False, rotation=0.0, shift=0.0, zoom=0.0)
    tmp = Path(tempfile.mkdtemp(prefix="h2a-bench-"))
    cache_root = keep if keep is not None else tmp / "tensors"
    print(f"\n== {root.name}: {n} images, size {size}, cfg {cfg.resize}/{cfg.contrast} ==")
    print(f"  load_dataset:        {load_s:.2f} s")
    try:
        bench_headers(ds, tmp, workers)

        t0 = time.perf_counter()
        cache = build_cache(ds, cfg, root=cache_root, workers=workers, force=True)
        build_s = time.perf_counter() - t0
        mb = cache.images.nbytes / 2**20
        print(f"  cache build:         {n / build_s:10.1f} img/s with {workers} worker(s) "
              f"({build_s:.2f} s, {mb:.0f} MiB, {cache.n_failed} failed)")
        if "images_per_s" in cache.info:  # the build's own figures (decode phase only)
            print(f"  build reports:       {cache.info['images_per_s']:10.1f} img/s, "
                  f"{cache.info['mb_per_s']:.1f} MB/s read ({cache.info['input_bytes'] / 1e6:.0f} MB of files)")
        if build_only:
            return
        t0 = time.perf_counter()
        again = build_cache(ds, cfg, root=cache_root, workers=workers)
        reopen_s = time.perf_counter() - t0
        assert not again.built_now
        print(f"  cache reopen:        {reopen_s * 1000:10.1f} ms (nothing decoded)")

        cache_epoch(cache, cfg)  # warm-up (page cache, allocator)
        runs = [cache_epoch(cache, cfg) for _ in range(3)]
        c_read, c_norm, c_first = min(runs, key=lambda r: r[0] + r[1])
        c_s = c_read + c_norm
        l_s = loader_epoch(cache, cfg)
        d_dec, d_norm, d_first = decode_epoch(paths, cfg)
        d_s = d_dec + d_norm
        same = torch.equal(c_first, d_first)
        print(f"  epoch from cache:    {n / c_s:10.0f} img/s normalised ({c_s:.3f} s; "
              f"uint8 read alone {n / c_read:.0f} img/s, memmap batches of {BATCH})")
        print(f"  epoch via Dataset:   {n / l_s:10.0f} img/s normalised ({l_s:.3f} s, "
              "CachedImageDataset + DataLoader, 0 workers)")
        print(f"  epoch decoding PNGs: {n / d_s:10.1f} img/s normalised ({d_s:.2f} s, 1 process; "
              f"normalise share {d_norm:.2f} s)")
        print(f"  speed-up, normalised tensors (cache vs decode, 1 process): {d_s / c_s:7.0f}x"
              "   (target >= 20x)")
        print(f"  speed-up, uint8 batches (normalise runs on the device):    {d_dec / c_read:7.0f}x")
        print(f"  speed-up, normalised, cache vs {workers}-worker decode (= build): "
              f"{build_s / c_s:7.0f}x")
        print(f"  speed-up, DataLoader path vs decode (1 process):           {d_s / l_s:7.0f}x")
        print(f"  first batch identical on both paths: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append",
                    help="dataset folder (repeatable); default: rsna-thumbs-100 and rsna-fullres")
    ap.add_argument("--size", type=int, action="append", help="cache image size (repeatable; default 256)")
    ap.add_argument("--build-only", action="store_true",
                    help="header scan and cache build only (no epoch comparisons): for the scale dataset")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    ap.add_argument("--workers", type=int, default=None,
                    help=f"cache build processes (default H2A_WORKERS = {get_settings().workers})")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads for both paths (default 1: on a small shared "
                         "box OpenMP spin-waiting makes torch.stack ~100x slower with 2)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="build caches under this folder and keep them (default: temp, removed)")
    args = ap.parse_args(argv)
    workers = args.workers or get_settings().workers
    sets = args.data or [p for p in DEFAULT_SETS if p.is_dir()]
    if not sets:
        print(f"No data: pass --data (looked for {', '.join(map(str, DEFAULT_SETS))})")
        return 1
    import os
    torch.set_num_threads(max(1, args.torch_threads))
    print(f"H2A tensor-cache benchmark: {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    for root in sets:
        for size in args.size or [256]:
            bench_one(root, size, args.limit, workers, args.keep, args.build_only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
