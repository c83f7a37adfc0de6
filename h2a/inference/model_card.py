"""Model cards (Hugging Face style ``README.md``) for shipped runs, written from the run's
own records, so every figure on the card is one the run folder can show.

Sources in the run folder: ``metadata.json`` (data, split, training, validation),
``holdout.json`` (``h2a evaluate --split holdout --json``, the recipe writes it),
``sites/*/site.json`` (``h2a adapt``: cross-validated figures on a site, the full-resolution
one included), ``robustness.json`` (``h2a robustness --json``) when present.

Core module: no streamlit.
"""

from __future__ import annotations

from pathlib import Path

from h2a import RESEARCH_NOTE
from h2a.run import Run, training_summary
from h2a.inference.site_profile import list_sites, read_site

__all__ = ["CARD", "card_text", "write_card"]

CARD = "README.md"
RSNA_TERMS = ("Trained on the RSNA Pediatric Bone Age Machine Learning Challenge 2017 training images (Halabi et "
              "al., Radiology 2019;290(2):498-503), downsampled to 100 x 100 px. Their use is governed by the RSNA "
              "challenge terms: research and non-commercial use, cite the paper. The weights inherit those terms; "
              "they are not a medical device.")


def _f(v, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _stages(meta: dict) -> list[dict]:
    """The run's training stages, first first: each warm start's source (metadata.json's
    ``warm_start.source``, recorded at training time) before the run itself."""
    stages, warm = [training_summary(meta)], meta.get("warm_start") or {}
    while warm.get("source"):
        stages.insert(0, warm["source"])
        warm = warm["source"].get("warm_start") or {}
    return stages


def _stages_text(meta: dict) -> str:
    """'18 epochs at 128 px (42 min), then 4 epochs at 160 px warm-started from it (14 min)'."""
    return ", then ".join(f"{st.get('epochs_run')} epochs at {st.get('image_size')} px"
                          f"{' warm-started from it' if i else ''} ({(st.get('train_seconds') or 0) / 60:.0f} min)"
                          for i, st in enumerate(_stages(meta)))


def _recipe_command(meta: dict) -> str:
    cfg = meta.get("train_config") or {}
    task = meta.get("task", "boneage")
    stages = " then ".join(f"--image-size {st.get('image_size')} --epochs {st.get('epochs_run')}"
                           for st in _stages(meta))
    return (f"bash recipes/{task}_release.sh   # h2a train --task {task} --arch {meta.get('arch')} {stages} "
            f"--seed {cfg.get('seed', 0)} ... (every flag in config.json)")


def _boneage_heldout(h: dict) -> list[str]:
    ba = h.get("bland_altman") or {}
    lines = [
        f"- **MAE {_f(h.get('mae'))} months** (standard error {_f(h.get('mae_se'))}), RMSE {_f(h.get('rmse'))}, "
        f"R² {_f(h.get('r2'), '.3f')}, {100 * (h.get('within_12_months') or 0):.1f}% within 12 months, "
        f"bias {_f(ba.get('bias', h.get('bias')), '+.2f')} (n = {h.get('n')}; "
        f"{'mirror + ' if h.get('flip_tta') else ''}{h.get('tta_views', 0)} augmented views)",
        "- MAE by sex: " + ", ".join(f"{k} {_f(v)}" for k, v in (h.get("mae_by_sex") or {}).items()),
        f"- 95% interval: coverage {_f(h.get('interval_coverage'), '.3f')}, mean width "
        f"{_f(h.get('interval_width_months'), '.1f')} months ({(h.get('interval_method') or {}).get('method', '')})",
        "",
        "| true age band | n | MAE (months) | interval coverage |",
        "|---|---|---|---|",
    ]
    n_by = h.get("n_by_age_bin") or {}
    for band, mae in (h.get("mae_by_age_bin") or {}).items():
        cov = (h.get("coverage_by_age_bin") or {}).get(band)
        lines.append(f"| {band} | {n_by.get(band, '')} | {_f(mae, '.1f')} | {_f(cov, '.3f')} |")
    return lines


def _sex_heldout(h: dict) -> list[str]:
    auc, se = h.get("auc"), h.get("auc_se")
    ci = f" (95% CI {auc - 1.96 * se:.3f}-{auc + 1.96 * se:.3f})" if auc is not None and se is not None else ""
    return [f"- **AUC {_f(auc, '.3f')}**{ci}, accuracy {_f(h.get('accuracy'), '.3f')}, balanced accuracy "
            f"{_f(h.get('balanced_accuracy'), '.3f')} (n = {h.get('n')}, image and mirror)",
            f"- Expected calibration error (15 bins): **{_f(h.get('ece'), '.3f')}** calibrated "
            f"({(h.get('calibration') or {}).get('method', '')}), {_f(h.get('ece_uncalibrated'), '.3f')} raw"]


def _site_lines(run_dir: Path) -> list[str]:
    out = []
    for name in list_sites(run_dir):
        site = read_site(run_dir, name)
        rep = site.info.get("report") or {}
        fitted = site.info.get("fitted_on") or {}
        out.append(f"### Site `{name}` ({fitted.get('n_images')} images of {fitted.get('data_name')})")
        if site.auto_min_side:
            out.append(f"Applied by default to uploads of {site.auto_min_side} px or more on the longer side.")
        for part, p in (site.info.get("parts") or {}).items():
            out.append(f"- {part}: {'kept' if p.get('kept') else 'left out'} ({p.get('why')})")
        if rep.get("variants"):
            out += ["", f"{rep.get('how')}:", "",
                    "| variant | MAE (SE) | bias | 95% coverage | MAE vs none (95% CI) |", "|---|---|---|---|---|"]
            for vname, v in rep["variants"].items():
                d = (rep.get("differences") or {}).get(vname)
                diff = f"{d['mae_difference']:+.2f} ({d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f})" if d else ""
                out.append(f"| {vname} | {_f(v.get('mae'))} ({_f(v.get('mae_se'))}) | {_f(v.get('bias'), '+.2f')} | "
                           f"{_f(v.get('coverage'), '.3f')} | {diff} |")
        out.append("")
    return out


def heatmap_lines(cam: dict | None) -> list[str]:
    """The heat map's measured hand share and randomisation check (``bench/bench_cam.py --write-run``)."""
    if not cam:
        return ["Not measured for this run (`bench/bench_cam.py --model RUN --write-run`)."]
    stage, method = cam.get("default", [None, None])
    out = [f"The map shown is {method} at trunk stage {stage} (chosen by the measure below). Hand share: the "
           "share of the map's mass inside the hand mask (a uniform map scores the hand's share of the frame); "
           "rank correlation with the map of a model whose trunk was re-initialised at random (lower: the map "
           "depends on what the model learned).", "",
           "| images | stage | method | grid | hand share (SE) | corr. with random trunk |", "|---|---|---|---|---|---|"]
    for name, s in (cam.get("sets") or {}).items():
        out.append(f"| {name} (n {s['n']}; uniform map {s['hand_fraction']:.2f}) | | | | | |")
        for r in s["rows"]:
            mark = " **(shown)**" if [r["stage"], r["method"]] == [stage, method] else ""
            out.append(f"| | {r['stage']} | {r['method']}{mark} | {r['grid']} x {r['grid']} | "
                       f"{_f(r['hand_share'], '.3f')} ({_f(r['hand_share_se'], '.3f')}) | "
                       f"{_f(r['randomisation_rho'], '.3f')} |")
    return out


def _robustness_lines(rob: dict | None) -> list[str]:
    rows = (rob or {}).get("rows") or (rob or {}).get("perturbations")
    if not rows:
        return ["Not measured for this card (`h2a robustness --model RUN --split holdout --json > robustness.json`)."]
    out = ["| perturbation | MAE | change | bias | flagged |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.get('name', r.get('perturbation'))} | {_f(r.get('mae'))} | {_f(r.get('mae_change'), '+.2f')} | "
                   f"{_f(r.get('bias'), '+.2f')} | {_f(r.get('flagged_share', r.get('flagged')), '.3f')} |")
    return out


def card_text(run_dir: str | Path, name: str | None = None) -> str:
    """The model card of a (shipped) run folder, from its own records."""
    run_dir = Path(run_dir)
    run = Run.at(run_dir)
    meta = run.meta or {}
    held = run.record("holdout")
    task = meta.get("task", "boneage")
    name = name or run_dir.name
    shipped = meta.get("shipped") or {}
    sizes = meta.get("split_sizes") or {}
    cfg = meta.get("train_config") or {}
    pre = meta.get("preprocess") or {}
    what = "bone age (months) from a hand radiograph and the child's sex" if task == "boneage" else \
        "the child's sex from a hand radiograph (probability of male)"
    lines = [
        "---", "license: other", "library_name: timm", f"tags: [h2a, bone-age, radiology, {task}]",
        "datasets: [RSNA Pediatric Bone Age 2017]", "---", "",
        f"# {name}", "",
        f"H2A's shipped {task} model: {what}. **{RESEARCH_NOTE}**", "",
        "## Model",
        f"- Architecture: {meta.get('arch')}{' (ImageNet-pretrained)' if meta.get('pretrained') else ''}, "
        f"input {pre.get('size')} px, "
        f"geometry `{pre.get('resize')}`{', cropped to the hand' if pre.get('hand_crop') else ''}",
        f"- Weights: `model.safetensors` in {shipped.get('precision', 'float32')}"
        + (f" (largest change of the outputs against float32 on {shipped['precision_check']['n_images']} held-out "
           f"images: {shipped['precision_check']['max_abs_change']:.4f} {shipped['precision_check']['unit']}, "
           f"allowed {shipped['precision_check']['tolerance']})" if shipped.get("precision_check") else ""),
        f"- Trained {_stages_text(meta)}, best epoch {meta.get('best_epoch')}"
        f"{' of the last stage' if meta.get('warm_start') else ''}, on {meta.get('device')}"
        + (f" ({shipped['trained_on']})" if shipped.get("trained_on") else "") + f"; seed {cfg.get('seed')}",
        f"- Training command: `{_recipe_command(meta)}`", "",
        "## Data and split",
        RSNA_TERMS, "",
        f"- {meta.get('dataset', {}).get('name')}: {sizes.get('train')} training, {sizes.get('validation')} "
        f"validation (model selection and calibration), {sizes.get('holdout')} held-out images (never trained or "
        "tuned on; measured once)."
        + (" The 53 full-resolution ids of `rsna-fullres` were left out of training: they fit and judge the "
           "`fullres` site." if cfg.get("exclude_ids") else ""), "",
        "## Held-out figures",
    ]
    if held:
        lines += _boneage_heldout(held) if task == "boneage" else _sex_heldout(held)
    else:
        lines.append("Not measured yet (`h2a evaluate --split holdout --json > holdout.json`).")
    if task == "boneage":
        lines += ["", "## Sites (full resolution and others)",
                  "Cross-validated on each site's own images (`h2a adapt`), folds by child.", ""]
        lines += _site_lines(run_dir) or ["No site fitted."]
        lines += ["", "## Heat map"]
        lines += heatmap_lines(run.record("heatmap"))
        rob = run.record("robustness")
        lines += ["", f"## Robustness ({(rob or {}).get('n_images', 'the')} held-out thumbnails, one view, "
                      "`h2a robustness`)"]
        lines += _robustness_lines(rob)
    fullres = ("- Full-resolution radiographs are read too old by the model as trained; the `fullres` site profile "
               "(applied automatically to large uploads) corrects it as measured above, on 53 images only."
               if task == "boneage" else
               "- Not measured on full-resolution radiographs: the model saw 100 px thumbnails only.")
    lines += [
        "", "## Intended use and limits",
        "- Intended for research and teaching on pediatric hand radiographs: exploring how well bone age "
        "(or sex) can be read from the image. " + RESEARCH_NOTE,
        "- Trained on 100 px thumbnails: the carpal and physis detail radiologists read is mostly gone; a "
        "single radiologist errs about 7.3 months, the best published models about 3.7-4.3 at 500 px.",
        fullres,
        "- One population (RSNA, North American hospitals); other populations, scanners and ages beyond "
        "0-19 years are outside what was measured. The out-of-distribution check flags images unlike the "
        "training images.",
        "- Validation labels come from one reader; held-out figures are against those labels, not a consensus.",
    ]
    return "\n".join(lines) + "\n"


def write_card(run_dir: str | Path, name: str | None = None) -> Path:
    path = Path(run_dir) / CARD
    path.write_text(card_text(run_dir, name))
    return path
