"""Benchmark upload-and-predict: latency per stage for one 2000 x 1500 PNG, and batch throughput.

Not a test: it prints figures. The image is a real radiograph from ``../shared/data/rsna-fullres``
resized to 1500 x 2000 px (portrait, as hands are) and written as an 8-bit PNG; without the
real data a synthetic demo hand of that size is used.

    .venv/bin/python bench/bench_predict.py                       # latency-only efficientnet_lite0 @ 256 px
    .venv/bin/python bench/bench_predict.py --model RUN [RUN ...]  # your trained run(s) (an ensemble)
    .venv/bin/python bench/bench_predict.py --arch tiny_cnn --size 128 --tta 16 --batch 54

Without ``--model`` a throwaway run of ``--arch`` at ``--size`` px is trained for one short
epoch on the demo data in a temporary workspace: its weights are meaningless, its speed is
that of the real architecture. Stages (median of ``--repeat`` runs after one warm-up):
decode (header + pixels), preprocess, model (one forward), TTA (N augmented copies in one
batch, embedding included), OOD (distance to the training embeddings), CAM (Grad-CAM +
mapping back to the image), report (one-page PDF), and end to end (``predict_image`` with
CAM + PDF, what the page does for one upload).

    .venv/bin/python bench/bench_predict.py --device cuda --image ../shared/data/rsna-fullres/boneage-training-dataset/1377.png \
        --data ../shared/data/rsna-thumbs-100 --workspace /tmp/ws --json predict.json

``--image`` uploads that file's bytes as they are (a full-resolution original) instead of
the 1500 x 2000 PNG; ``--device`` loads the models there (the app's Predictor uses the CPU);
``--data`` trains the latency-only run on that dataset instead of generating the demo;
``--workspace`` holds that run; ``--json`` writes the figures (bench/gpu_check.py reads them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

FULLRES = REPO.parent / "shared" / "data" / "rsna-fullres"


def _timed(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _test_png(work: Path) -> tuple[bytes, str]:
    """A 1500 x 2000 8-bit PNG of a real radiograph (or of a demo hand without the real data)."""
    import cv2
    from PIL import Image

    from h2a.data.imageio import read_image, to_uint8

    folder = FULLRES / "boneage-training-dataset"
    if folder.is_dir():
        src = sorted(folder.glob("*.png"))[0]
        what = f"{src.name} from rsna-fullres"
        img = read_image(src)
    else:
        from h2a.data.demo import render_hand

        img = render_hand(120.0, True, seed=1, size=(2000, 1500))
        what = "a synthetic demo hand"
    img = cv2.resize(np.asarray(img, np.float32), (1500, 2000), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG")
    (work / "bench.png").write_bytes(buf.getvalue())
    return buf.getvalue(), what


def _latency_run(arch: str, size: int, workspace: Path, data: Path | None = None) -> Path:
    """One short epoch on ``data`` (default the demo data): a real run folder of that architecture."""
    from h2a.data.demo import ensure_demo
    from h2a.data.preprocess import PreprocessConfig
    from h2a.engine.config import TrainConfig
    from h2a.engine.trainer import train
    from h2a.models import model_info

    demo = data if data is not None else ensure_demo(n=120, seed=0)
    out = workspace / "models" / f"latency-{arch}-{size}"
    cfg = TrainConfig(data=str(demo), out=str(out), arch=arch, pretrained=model_info(arch).pretrained_available,
                      preprocess=PreprocessConfig(size=size).to_dict(), epochs=1, batch_size=16,
                      max_train_images=32, workers=0, seed=0)
    train(cfg, log=lambda m: None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="*", default=None, help="run name(s)/path(s); default: a latency-only run")
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--tta", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=20, help="files for the throughput figure (rsna-fullres)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads per prediction (default: adaptive, 1 when the machine is busy)")
    ap.add_argument("--device", default=None, help="where the models run: cpu (default, as the app), cuda, cuda:N")
    ap.add_argument("--image", type=Path, default=None,
                    help="upload this file as it is (default: a real radiograph resized to 1500 x 2000 PNG)")
    ap.add_argument("--data", type=Path, default=None, help="dataset for the latency-only run (default: demo data)")
    ap.add_argument("--workspace", type=Path, default=None,
                    help="workspace of the latency-only run (default: one in the temp folder, reused)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="h2a-bench-predict-"))
    # the latency-only run is reused between runs
    ws = args.workspace or Path(tempfile.gettempdir()) / "h2a-bench-predict-ws"
    if not args.model:
        os.environ["H2A_WORKSPACE"] = str(ws)
        os.environ["H2A_MODELS_DIR"] = str(ws / "models")
    import torch

    from h2a.data.imageio import read_header, read_image
    from h2a.data.preprocess import prepare
    from h2a.device import describe_device, resolve_device
    from h2a.inference.cam import overlay
    from h2a.run import Run
    from h2a.predict.batch import predict_files
    from h2a.predict.predictor import Predictor, cam_to_image, cpu_threads
    from h2a.predict.report import pdf_report

    t0 = time.perf_counter()
    runs = args.model
    made = None
    if not runs:
        out = ws / "models" / f"latency-{args.arch}-{args.size}"
        if Run.at(out).meta is None:
            _latency_run(args.arch, args.size, ws, args.data)
            made = time.perf_counter() - t0
        runs = [str(out)]
    t0 = time.perf_counter()
    device = resolve_device(args.device or "cpu")
    predictor = Predictor(runs, device=device, threads=args.threads)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor.prepare_ood()
    t_ood_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor.warmup()
    t_warm = time.perf_counter() - t0
    run = predictor.runs[0]
    if args.image is not None:
        png, what = args.image.read_bytes(), f"{args.image.name} as uploaded"
    else:
        png, what = _test_png(tmp)
    upload = args.image.name if args.image is not None else "bench.png"
    (tmp / "bench.png").write_bytes(png)  # the batch's stand-in without the real data

    print(f"H2A predict benchmark · torch {torch.__version__} · {os.cpu_count()} CPUs · {describe_device(device)}")
    for s in predictor.summaries:
        print(f"model  {s['run']}: {s['arch']} @ {s['image_size']} px"
              + (" (latency-only run, trained 1 short epoch)" if not args.model else ""))
    print(f"image  {what}{'' if args.image else ', resized to 1500 x 2000 px'}, {len(png) / 1e6:.2f} MB")
    if made is not None:
        print(f"setup  latency-only run trained in {made:.1f} s")
    print(f"setup  load {t_load * 1000:.0f} ms · OOD reference {t_ood_ref * 1000:.0f} ms (once per run, then "
          f"cached in ood.npz) · warm-up {t_warm * 1000:.0f} ms (once per process)")

    r = args.repeat
    threads_cm = cpu_threads(run.device, args.threads)
    threads_cm.__enter__()
    load = os.getloadavg()[0]
    print(f"load   1-min load average {load:.1f} on {os.cpu_count()} CPUs -> {torch.get_num_threads()} "
          f"torch thread(s) per prediction")
    t_decode, img = _timed(lambda: (read_header(png, upload), read_image(png, upload))[1], r)
    t_prep, u8 = _timed(lambda: prepare(img, run.preprocess), r)
    t_model, _ = _timed(lambda: predictor.forward(run, u8[None], True), r)
    t_tta, out = _timed(lambda: predictor.forward(run, predictor.tta_inputs(run, u8, args.tta), True), r)
    ref = predictor.ood_reference(run)
    t_ood = _timed(lambda: ref.score(out[1]), r)[0] if ref is not None else float("nan")
    shape = (img.shape[0] * 1024 // max(img.shape), img.shape[1] * 1024 // max(img.shape))
    t_cam, _ = _timed(lambda: cam_to_image(predictor.cam(run, u8, True), shape, run.preprocess), r)
    res = predictor.predict_image(png, upload, sex="male", age_months=120, tta=args.tta, cam=True)
    if res.error:  # predict_image never raises: a timing of its error path would look like a fast one
        raise SystemExit(f"predict_image failed: {res.error}")
    t_overlay, _ = _timed(lambda: overlay(res.image, res.cam, 0.45), r)
    t_report, pdf = _timed(lambda: pdf_report(res), r)
    threads_cm.__exit__(None, None, None)  # predict_image picks its own threads (the same rule)
    t_e2e, _ = _timed(lambda: pdf_report(predictor.predict_image(png, upload, sex="male", age_months=120,
                                                                 tta=args.tta, cam=True)), r)

    print(f"\nlatency for one image (median of {r}, ms)")
    rows = [("decode (header + pixels)", t_decode), ("preprocess", t_prep), ("model (1 forward)", t_model),
            (f"TTA ({args.tta} copies, one batch)", t_tta), ("OOD distance", t_ood), ("Grad-CAM", t_cam),
            ("overlay (page slider)", t_overlay), ("PDF report", t_report),
            ("end to end: predict_image + CAM + PDF", t_e2e)]
    for name, v in rows:
        print(f"  {name:<40} {v * 1000:8.1f}")
    print(f"  PDF size {len(pdf) / 1024:.0f} KiB; estimate {res.bone_age_months:.1f} months "
          f"[{res.interval_months[0]:.1f}, {res.interval_months[1]:.1f}]")

    figures = {"device": describe_device(device), "image": what, "image_bytes": len(png),
               "image_shape": list(img.shape), "arch": run.meta["model"]["name"], "size": run.preprocess.size,
               "tta": args.tta, "repeat": r, "ms": {label: round(v * 1000, 2) for label, v in rows},
               "estimate_months": res.bone_age_months}
    folder = FULLRES / "boneage-training-dataset"
    if args.batch <= 0:
        _write(args.json, figures)
        return
    files = sorted(folder.glob("*.png"))[: args.batch] if folder.is_dir() else [tmp / "bench.png"] * args.batch
    t0 = time.perf_counter()
    results = predict_files(runs, [str(f) for f in files], sex="female", age_months=120, tta=args.tta)
    dt = time.perf_counter() - t0
    ok = sum("error" not in x for x in results)
    print(f"\nbatch  {len(files)} files ({'rsna-fullres originals' if folder.is_dir() else 'copies'}, "
          f"TTA {args.tta}, no CAM/PDF): {dt:.1f} s, {len(files) / dt:.2f} images/s, "
          f"{dt / len(files) * 1000:.0f} ms/image, {ok} ok")
    figures["batch"] = {"files": len(files), "seconds": round(dt, 2), "ok": ok}
    _write(args.json, figures)


def _write(path: Path | None, figures: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
