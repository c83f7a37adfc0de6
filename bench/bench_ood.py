"""Benchmark the reject option: does H2A flag images that are not hand radiographs, and
only those? And does it catch inverted / rotated radiographs?

Not a test: it prints figures (and writes them as JSON under ``bench/out/``, git-ignored).

    .venv/bin/python bench/bench_ood.py                       # models/rsna-thumbs-boneage-cpu
    .venv/bin/python bench/bench_ood.py --model /tmp/ood-run --hands 500
    .venv/bin/python bench/bench_ood.py --orientation         # inversion / rotation only, no model

OOD mode runs the real predictor (``Predictor.predict_image``, one view, no CAM: the
image checks, the orientation check and the OOD score exactly as an upload gets them) on

- real hands: a seeded sample of the run's HELD-OUT thumbnails (``splits.holdout`` in
  its metadata, else images in neither its training nor validation split) from
  ``../shared/data/rsna-thumbs-100``, and the 53 full-resolution originals in
  ``../shared/data/rsna-fullres`` (those in the run's training split are counted apart);
- non-hand images made here, per category: natural photographs (scikit-learn's two
  sample images: crops, rotations, colour and greyscale), documents (text rendered with
  OpenCV), blank and near-blank, noise, gradients, synthetic drawings of other body
  parts (a chest-like and a foot-like drawing: crude shapes, NOT real radiographs), and
  synthetic hands from the demo generator (``h2a.data.demo``).

It prints, per category, the share flagged by any rejecting alert (``alerts.FLAGGING``
less the orientation codes), the share flagged by the OOD score alone, the share with an
``inverted`` / ``rotated`` alert, and the AUROC of the OOD score against the real
held-out hands.

Orientation mode feeds upright, inverted and 90/180/270-degree versions of real
radiographs (a seeded thumbnail sample and the full-res originals) to
``h2a.data.orientation.orientation_check`` and prints the share corrected (rightly and
wrongly), flagged and missed, and the false-alarm rate on the upright originals.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
THUMBS = DATA / "rsna-thumbs-100"
FULLRES = DATA / "rsna-fullres"
IMAGES = "boneage-training-dataset"
DEFAULT_MODEL = REPO / "models" / "rsna-thumbs-boneage-cpu"
OUT = REPO / "bench" / "out"
SEED = 0


# ---------------------------------------------------------------- image makers

def _png(img: np.ndarray) -> bytes:
    """8-bit PNG bytes of a float [0, 1] (H, W) or (H, W, 3) RGB array or a uint8 one."""
    from PIL import Image

    a = img if img.dtype == np.uint8 else np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _photos(rng: np.random.Generator) -> dict[str, list[bytes]]:
    """Crops, rotations and greyscale versions of scikit-learn's two sample photographs."""
    from sklearn.datasets import load_sample_images

    colour, grey = [], []
    for photo in load_sample_images().images:  # (427, 640, 3) uint8 each: a temple and a flower
        h, w = photo.shape[:2]
        for i in range(12):
            ch = int(rng.integers(h // 3, h + 1))
            cw = int(rng.integers(w // 3, w + 1))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = np.rot90(photo[y:y + ch, x:x + cw], i % 4).copy()
            colour.append(_png(crop))
            grey.append(_png(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)))
    return {"photo (colour)": colour, "photo (greyscale)": grey}


def _documents(rng: np.random.Generator) -> list[bytes]:
    """Pages of rendered text: black on white, white on black, a few sizes and fonts."""
    words = ("patient", "radiograph", "report", "bone", "age", "left", "hand", "findings", "normal",
             "impression", "the", "and", "of", "date", "study", "clinical", "history", "months")
    fonts = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_PLAIN)
    out = []
    for i in range(24):
        h, w = int(rng.integers(600, 1100)), int(rng.integers(450, 850))
        page = np.full((h, w), 255, np.uint8)
        scale = float(rng.uniform(0.5, 1.3))
        step = int(30 * scale) + 8
        for y in range(40, h - 30, step):
            line = " ".join(rng.choice(words, size=int(rng.integers(3, 9))))
            cv2.putText(page, line, (30, y), fonts[i % len(fonts)], scale, 0, 1 + (i % 2), cv2.LINE_AA)
        out.append(_png(255 - page if i % 3 == 2 else page))
    return out


def _blank(rng: np.random.Generator) -> list[bytes]:
    """All black, all white, flat greys, and near-blank (faint noise or a faint gradient)."""
    out = [_png(np.full((512, 400), v, np.float32)) for v in (0.0, 1.0, 0.2, 0.5, 0.8)]
    for v in (0.05, 0.3, 0.6, 0.9):
        out.append(_png(np.clip(v + rng.normal(0, 0.004, (512, 400)), 0, 1)))
        yy = np.linspace(0, 0.03, 512)[:, None] * np.ones((1, 400))
        out.append(_png(v + yy))
    return out


def _noise(rng: np.random.Generator) -> list[bytes]:
    """White noise of several kinds, and smoothed noise (which a pixel-correlation check passes)."""
    out = []
    for i in range(6):
        out.append(_png(rng.uniform(0, 1, (400, 320))))
        out.append(_png(np.clip(0.5 + rng.normal(0, 0.2, (400, 320)), 0, 1)))
        sp = (rng.random((400, 320)) < 0.5).astype(np.float32)
        out.append(_png(sp))
        sm = cv2.GaussianBlur(rng.normal(0, 1, (400, 320)).astype(np.float32), (0, 0), 2.0 + 3 * i)
        out.append(_png((sm - sm.min()) / (sm.max() - sm.min() + 1e-9)))
    return out


def _gradients(rng: np.random.Generator) -> list[bytes]:
    """Linear gradients at several angles and radial ones."""
    out = []
    yy, xx = np.mgrid[0:400, 0:320].astype(np.float32)
    for ang in range(0, 360, 30):
        t = np.cos(np.radians(ang)) * xx + np.sin(np.radians(ang)) * yy
        out.append(_png((t - t.min()) / (t.max() - t.min())))
    for _ in range(6):
        cy, cx = rng.uniform(0, 400), rng.uniform(0, 320)
        r = np.hypot(yy - cy, xx - cx)
        r = r / r.max()
        out.append(_png(1 - r if rng.random() < 0.5 else r))
    return out


def _radiograph_look(att: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Attenuation map -> a radiograph-like image (bright = dense), with blur and film noise."""
    img = 1.0 - np.exp(-cv2.GaussianBlur(att.astype(np.float32), (0, 0), 2.0))
    img = 0.05 + 0.9 * img / max(float(img.max()), 1e-6)
    return np.clip(img + rng.normal(0, 0.015, img.shape), 0, 1)


def _chests(rng: np.random.Generator, n: int = 12) -> list[bytes]:
    """Crude chest-like drawings (a synthetic sketch, NOT a real radiograph): thorax, darker
    lungs, spine, rib arcs, clavicles, a heart shadow."""
    out = []
    for _ in range(n):
        h, w = int(rng.integers(420, 520)), int(rng.integers(420, 520))
        att = np.zeros((h, w), np.float32)
        cx = w // 2
        cv2.ellipse(att, (cx, h // 2), (int(w * 0.42), int(h * 0.47)), 0, 0, 360, 0.8, -1)
        for side in (-1, 1):
            cv2.ellipse(att, (cx + side * int(w * 0.19), int(h * 0.48)), (int(w * 0.14), int(h * 0.3)), 0, 0, 360,
                        0.25, -1)
            for k in range(9):
                y = int(h * (0.22 + 0.065 * k))
                cv2.ellipse(att, (cx, y), (int(w * 0.36), int(h * 0.08)), 0, 180 if side < 0 else 270,
                            270 if side < 0 else 360, 1.6, 3)
            cv2.line(att, (cx, int(h * 0.15)), (cx + side * int(w * 0.3), int(h * 0.12)), 2.0, 6)
        cv2.rectangle(att, (cx - 12, 0), (cx + 12, h), 2.2, -1)
        cv2.ellipse(att, (cx + int(w * 0.06), int(h * 0.62)), (int(w * 0.13), int(h * 0.15)), 20, 0, 360, 1.4, -1)
        out.append(_png(_radiograph_look(att, rng)))
    return out


def _feet(rng: np.random.Generator, n: int = 12) -> list[bytes]:
    """Crude foot-like drawings (a synthetic sketch, NOT a real radiograph): a sole outline,
    five toes with phalanges, metatarsals fanning to a heel block, seen from above."""
    out = []
    for _ in range(n):
        h, w = int(rng.integers(480, 560)), int(rng.integers(280, 340))
        att = np.zeros((h, w), np.float32)
        cv2.ellipse(att, (w // 2, int(h * 0.55)), (int(w * 0.33), int(h * 0.42)), 0, 0, 360, 0.35, -1)
        heel = (w // 2 + int(rng.integers(-10, 10)), int(h * 0.85))
        cv2.ellipse(att, heel, (int(w * 0.18), int(h * 0.09)), 0, 0, 360, 1.8, -1)
        for t in range(5):
            x = int(w * (0.27 + 0.12 * t))
            top = int(h * (0.08 + 0.03 * abs(t - 1)))
            cv2.line(att, (x, top + 60), heel, 1.5, 10 if t == 0 else 7)
            for j in range(3 if t else 2):
                y0 = top + j * 22
                cv2.line(att, (x, y0), (x, y0 + 16), 1.7, 10 if t == 0 else 7)
        out.append(_png(_radiograph_look(att, rng)))
    return out


def _demo_hands(n: int = 30) -> list[bytes]:
    """Synthetic hands from the demo generator: hand-shaped, but not what the run learned from."""
    from h2a.data.demo import render_hand

    rng = np.random.default_rng(SEED + 1)
    return [_png(render_hand(float(rng.uniform(12, 216)), bool(rng.random() < 0.5), 10_000 + i)) for i in range(n)]


def non_hand_sets() -> dict[str, list[bytes]]:
    """Every made-up non-hand category as PNG bytes, seeded (the same set every run)."""
    rng = np.random.default_rng(SEED)
    sets = _photos(rng)
    sets.update({
        "document": _documents(rng), "blank / near-blank": _blank(rng), "noise": _noise(rng),
        "gradient": _gradients(rng), "chest-like drawing": _chests(rng), "foot-like drawing": _feet(rng),
        "synthetic hand (demo)": _demo_hands(),
    })
    return sets


# ---------------------------------------------------------------- real hands

def _ids(csv: Path) -> list[str]:
    import pandas as pd

    return [str(i) for i in pd.read_csv(csv)["id"]]


def held_out_thumbs(meta: dict, n: int, seed: int = SEED) -> list[Path]:
    """A seeded sample of thumbnails the run never trained or tuned on."""
    splits = meta.get("splits", {})
    held = [str(i) for i in splits.get("holdout", [])]
    if not held:
        used = {str(i) for k in ("train", "validation") for i in splits.get(k, [])}
        held = [i for i in _ids(THUMBS / "boneage-training-dataset.csv") if i not in used]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(held), size=min(n, len(held)), replace=False))
    return [p for p in (THUMBS / IMAGES / f"{held[i]}.png" for i in pick) if p.exists()]


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random non-hand > score of a random hand), ties counted half (Mann-Whitney)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (neg[:, None] > pos[None, :]).mean()
    ties = (neg[:, None] == pos[None, :]).mean()
    return float(greater + 0.5 * ties)


# ---------------------------------------------------------------- OOD mode

def run_ood(args: argparse.Namespace) -> dict:
    from h2a.predict.alerts import FLAGGING, Code, codes
    from h2a.predict.predictor import Predictor
    from h2a.run import Run

    orient_codes = {Code.INVERTED, Code.ROTATED}
    reject = set(FLAGGING) - orient_codes  # "not a usable / not like the training images"; orientation apart
    model = Path(args.model)
    meta = Run.at(model).meta
    t0 = time.perf_counter()
    pred = Predictor(str(model))
    pred.prepare_ood()
    ref = pred.ood_reference(pred.runs[0])
    print(f"run {model} ({meta.get('arch')}, {pred.runs[0].preprocess.size} px); OOD reference ready in "
          f"{time.perf_counter() - t0:.0f} s: threshold {ref.threshold:.4f} = conformal q{ref.quantile} of "
          f"{len(ref.val_distances)} {ref.calibrated_on} distances, {len(ref.train)} training embeddings")

    def one(source, name: str) -> tuple[float, list[str]]:
        r = pred.predict_image(source, name, sex="female", tta=1, cam=False)
        if not r.ok:
            return float("nan"), ["error"]
        return float(r.ood_score if r.ood_score is not None else np.nan), codes(r.warnings)

    rows: dict[str, list[tuple[float, list[str]]]] = {}
    hands = held_out_thumbs(meta, args.hands)
    rows["REAL held-out thumbnail"] = [one(str(p), p.name) for p in hands]
    train_ids = {str(i) for i in meta.get("splits", {}).get("train", [])}
    full = sorted((FULLRES / IMAGES).glob("*.png"))
    rows["REAL full-res, not trained on"] = [one(str(p), p.name) for p in full if p.stem not in train_ids]
    rows["REAL full-res, in training split"] = [one(str(p), p.name) for p in full if p.stem in train_ids]
    for cat, items in non_hand_sets().items():
        rows[cat] = [one(b, f"{cat}-{i}.png") for i, b in enumerate(items)]

    hand_scores = np.array([s for s, _ in rows["REAL held-out thumbnail"]])
    report: dict = {"model": str(model), "threshold": ref.threshold, "quantile": ref.quantile,
                    "calibrated_on": ref.calibrated_on, "n_calibration": len(ref.val_distances),
                    "categories": {}}
    print(f"\n{'category':34s} {'n':>4s} {'flagged':>8s} {'OOD':>6s} {'orient':>7s} {'AUROC':>6s}  median score")
    all_non: list[float] = []
    for cat, rs in rows.items():
        if not rs:
            continue
        sc = np.array([s for s, _ in rs])
        flagged = np.mean([bool(reject & set(c)) or "error" in c for _, c in rs])
        ood = np.mean([Code.OUT_OF_DISTRIBUTION in c for _, c in rs])
        orient = np.mean([bool(orient_codes & set(c)) for _, c in rs])
        real = cat.startswith("REAL")
        auc = float("nan") if real else auroc(hand_scores, sc[np.isfinite(sc)])
        if not real:
            all_non += list(sc[np.isfinite(sc)])
        report["categories"][cat] = {"n": len(rs), "flagged": float(flagged), "ood_flagged": float(ood),
                                     "orientation_alert": float(orient), "auroc": auc,
                                     "median_score": float(np.nanmedian(sc))}
        print(f"{cat:34s} {len(rs):4d} {flagged:8.1%} {ood:6.1%} {orient:7.1%} {auc:6.3f}  {np.nanmedian(sc):.2f}")
    overall = auroc(hand_scores, np.array(all_non))
    report["auroc_all_non_hands"] = overall
    print(f"\nAUROC of the OOD score, real held-out thumbnails vs all {len(all_non)} non-hand images: {overall:.3f}")
    held = report["categories"]["REAL held-out thumbnail"]
    print(f"real held-out thumbnails flagged out_of_distribution: {held['ood_flagged']:.1%} "
          f"(any rejecting alert: {held['flagged']:.1%}; an orientation alert: {held['orientation_alert']:.1%})")
    black = one(_png(np.zeros((512, 400), np.float32)), "black.png")
    print(f"an all-black image: OOD score {black[0]:.2f}, alerts {black[1]}")
    report["all_black"] = {"ood_score": black[0], "codes": black[1]}
    return report


# ---------------------------------------------------------------- orientation mode

def _orientation_sample(n: int, seed: int) -> dict[str, list[np.ndarray]]:
    from h2a.data.imageio import read_image

    files = sorted((THUMBS / IMAGES).glob("*.png"))
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(files), size=min(n, len(files)), replace=False)) if files else []
    return {"rsna-thumbs-100": [read_image(files[i]) for i in pick],
            "rsna-fullres": [read_image(p) for p in sorted((FULLRES / IMAGES).glob("*.png"))]}


def run_orientation(args: argparse.Namespace) -> dict:
    from h2a.data.orientation import orientation_check

    variants = {  # name -> (transform, the rotation / inversion orientation_check should report)
        "upright": (lambda a: a, 0, False),
        "inverted": (lambda a: 1.0 - a, 0, True),
        "rotated 90 cw": (lambda a: np.rot90(a, -1), 90, False),
        "rotated 180": (lambda a: np.rot90(a, 2), 180, False),
        "rotated 90 ccw": (lambda a: np.rot90(a, 1), 270, False),
        "inverted + rotated 90 cw": (lambda a: np.rot90(1.0 - a, -1), 90, True),
    }
    report: dict = {}
    for data, imgs in _orientation_sample(args.orientation_n, args.seed).items():
        if not imgs:
            print(f"{data}: not found, skipped")
            continue
        print(f"\n{data}: n = {len(imgs)} per variant")
        print(f"{'variant':26s} {'corrected':>9s} {'wrongly':>8s} {'flagged':>8s} {'missed':>7s} "
              f"{'corrected or flagged':>21s}")
        report[data] = {"n": len(imgs)}
        t0 = time.perf_counter()
        for name, (tf, rot, inv) in variants.items():
            res = [orientation_check(np.ascontiguousarray(tf(a))) for a in imgs]
            right = np.mean([r.was_corrected and r.rotation == rot and r.inverted == inv for r in res])
            wrong = np.mean([r.was_corrected and not (r.rotation == rot and r.inverted == inv) for r in res])
            flagged = np.mean([r.deviates and not r.was_corrected for r in res])
            if name == "upright":
                alarm = np.mean([r.deviates for r in res])
                print(f"{name:26s} false alarms {alarm:.1%} (corrected {wrong:.1%}, flagged {flagged:.1%})")
                report[data][name] = {"false_alarm": float(alarm), "corrected": float(wrong),
                                      "flagged": float(flagged)}
                continue
            missed = np.mean([not r.deviates for r in res])
            print(f"{name:26s} {right:9.1%} {wrong:8.1%} {flagged:8.1%} {missed:7.1%} {1 - missed:21.1%}")
            report[data][name] = {"corrected": float(right), "corrected_wrongly": float(wrong),
                                  "flagged": float(flagged), "missed": float(missed)}
        per = (time.perf_counter() - t0) / (len(imgs) * len(variants))
        print(f"({per * 1000:.1f} ms per image)")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="run folder (default %(default)s)")
    ap.add_argument("--hands", type=int, default=500, help="held-out thumbnails to score (default %(default)s)")
    ap.add_argument("--orientation", action="store_true", help="measure the orientation check instead (no model)")
    ap.add_argument("--orientation-n", type=int, default=500, help="thumbnails for --orientation")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    if args.orientation:
        report, name = run_orientation(args), "orientation.json"
    else:
        from h2a.run import Run

        if Run.at(args.model).meta is None:
            raise SystemExit(f"{args.model}: no finished run there (metadata.json missing); pass --model RUN")
        report, name = run_ood(args), "ood.json"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(report, indent=2, default=str))
    print(f"\nfigures written to {OUT / name}")


if __name__ == "__main__":
    main()
