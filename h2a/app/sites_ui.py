"""The Evaluation page's site section: each site profile's cross-validated before/after
figures, read from ``RUN/sites/SITE/site.json`` (nothing is computed on the page)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from h2a.app.plain import plain, safe_table
from h2a.inference.site_profile import SiteError, list_sites, read_site

__all__ = ["site_frame", "sites_section"]


def _r(v, nd: int = 2):
    return None if v is None else round(float(v), nd)


def site_frame(info: dict) -> pd.DataFrame:
    """One row per variant (none, each part alone, all kept): MAE, its SE, bias, coverage,
    width and the paired MAE difference against none with its 95% bootstrap interval."""
    rep = info.get("report") or {}
    rows = []
    for name, v in (rep.get("variants") or {}).items():
        d = (rep.get("differences") or {}).get(name)
        rows.append({"variant": name, "MAE (mo)": _r(v.get("mae")), "SE": _r(v.get("mae_se")),
                     "bias (mo)": _r(v.get("bias")), "95% coverage": _r(v.get("coverage"), 3),
                     "mean width (mo)": _r(v.get("width_months"), 1),
                     "MAE vs none": _r(d["mae_difference"]) if d else None,
                     "95% CI": f"{d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}" if d else ""})
    return pd.DataFrame(rows)


def sites_section(paths: list[Path]) -> None:
    """The site profiles of the chosen runs, before and after, cross-validated."""
    found = [(Path(p), name) for p in paths for name in list_sites(p)]
    if not found:
        return
    st.subheader("Sites: adapting to where images come from")
    st.caption("Each site profile (`h2a adapt`) was judged by cross-validation on the site's own images, folds by "
               "child: a part that did not beat no adaptation was left out. Figures are the cross-validated ones "
               "stored with the profile.")
    for path, name in found:
        try:
            site = read_site(path, name)
        except SiteError as exc:
            st.warning(f"{plain(path.name)} / {plain(name)}: {plain(exc, 600)}")  # folder names, file errors
            continue
        fitted = site.info.get("fitted_on") or {}
        kept = ", ".join(site.parts) or "no part kept"
        with st.expander(f"{plain(path.name)} · site {plain(name)} · {plain(kept)}",
                         expanded=len(found) == 1):
            st.text(f"Fitted on {fitted.get('n_images')} {'labelled' if fitted.get('labelled') else 'unlabelled'} "
                    f"images of {fitted.get('data_name')} on {str(site.info.get('created', ''))[:10]}"
                    + (f"; default for uploads of {site.auto_min_side} px or more" if site.auto_min_side else ""))
            for part, p in (site.info.get("parts") or {}).items():
                st.text(f"{part}: {'kept' if p.get('kept') else 'left out'} — {p.get('why')}")
            rep = site.info.get("report") or {}
            if rep.get("unlabelled"):
                st.text(f"Unlabelled: mean estimate {rep['mean_estimate_before']:.1f} -> "
                        f"{rep['mean_estimate_after']:.1f} months; not judged (no labels).")
            else:
                st.dataframe(safe_table(site_frame(site.info), own=("95% CI",)), hide_index=True, width="stretch")
