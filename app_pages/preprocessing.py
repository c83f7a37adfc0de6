"""Preprocessing preview: what resize, crop, contrast, normalisation and augmentation do
to real images, and a named config that training will use.

The model-input numbers come from ``h2a.data.transforms`` (input_norm + array_input), the
one transform the engine, embeddings and prediction use, for the architecture picked.

At full resolution (2000 px radiographs, 12,611 of them) the page stays quick: the picker
lists at most 200 ids matching an id search (never every label in the browser), a picked image
is decoded once per server (``st.cache_data``, shared by every session) and shown at screen
size, and the augmented samples are cached per config."""

import json

import numpy as np
import pandas as pd
import streamlit as st
import torch

from h2a.analysis.stats import select_images
from h2a.app.charts import intensity_histogram
from h2a.app.option_widgets import option_widget
from h2a.app.plain import plain, safe_table
from h2a.app.preview_ui import MAX_OPTIONS, augmented, display_view, image_labels, matching_ids
from h2a.app.state import decoded, file_token, require_dataset
from h2a.data.preprocess import PreprocessConfig, list_configs, load_config, prepare, save_config
from h2a.data.transforms import array_input, augmentation, input_norm
from h2a.models import list_models
from h2a.options import declarations

active = require_dataset()
ds = active.ds
frame = active.frame
usable = frame[frame["path"].notna() & frame["error"].isna()]

st.title("Preprocessing preview")
if usable.empty:
    st.warning("This dataset has no readable images to preview.")
    st.stop()

# ------------------------------------------------------------------ config controls
defaults = PreprocessConfig()
with st.sidebar:
    st.subheader("Preprocessing config")
    saved = list_configs()
    base_name = st.selectbox("Start from", ["(defaults)"] + saved, key="pp_base")
    base = defaults if base_name == "(defaults)" else load_config(base_name)
    if st.session_state.get("pp_loaded") != base_name:
        # Loading a saved config resets the widgets to its values once.
        for k, v in base.to_dict().items():
            st.session_state[f"pp_{k}"] = v
        st.session_state["pp_loaded"] = base_name

    # Every widget comes from PreprocessConfig's declarations (label, help, range).
    values = {}
    group = None
    for d in declarations(PreprocessConfig):
        if d.opt.group != group and d.opt.group == "augmentation":
            st.markdown("**Augmentation** (training only)")
        if d.name == "aug_gamma":  # the first photometric field: how the image was made
            st.caption("Photometric: how the image was made (0 = off)")
        group = d.opt.group
        disabled = d.name.startswith("clahe_") and st.session_state.get("pp_contrast") != "clahe"
        values[d.name] = option_widget(st, PreprocessConfig, d.name, key=f"pp_{d.name}", disabled=disabled,
                                       widget="radio" if d.opt.choices else None)
    st.markdown("**Model input**")
    archs = list_models()
    arch = st.selectbox("Architecture", archs, key="pp_arch",
                        index=archs.index("efficientnet_lite0") if "efficientnet_lite0" in archs else 0,
                        help="the input statistics below are for this architecture's normalisation, "
                             "through the same transform the training engine uses")

cfg = PreprocessConfig(**values)
norm = input_norm(arch, cfg)
cpu = torch.device("cpu")

# ------------------------------------------------------------------ image choice
labels = image_labels(ds.fingerprint, usable)
paths = dict(zip(usable["id"].astype(str), usable["path"]))


def _label(i: str) -> str:
    return labels.get(str(i), str(i))


MAX_PICKS = 4
all_ids = usable["id"].astype(str)
valid_ids = set(all_ids)


def _picks() -> list[str]:
    return [str(i) for i in st.session_state.get("preview_ids", []) if str(i) in valid_ids]


def _add_typed_id() -> None:
    """An exact id typed in the search box joins the picks (the oldest leaves beyond 4)."""
    q = str(st.session_state.get("pp_find", "")).strip()
    if q in valid_ids:
        st.session_state["preview_ids"] = ([i for i in _picks() if i != q] + [q])[-MAX_PICKS:]


c1, c2, c3 = st.columns([1, 2, 1])
sex = c1.selectbox("Random pick: sex", ["any", "female", "male"], key="pp_pick_sex")
age = c2.slider("Random pick: bone age (months)", 0, 240, (0, 240), key="pp_pick_age")
if c3.button("Random image", key="pp_random") or "preview_ids" not in st.session_state:
    pool = select_images(usable, sex, age)
    if pool.empty:
        st.warning("No image matches that sex and age range.")
    else:
        rng = np.random.default_rng(st.session_state.get("pp_rng", 0))
        st.session_state["pp_rng"] = st.session_state.get("pp_rng", 0) + 1
        st.session_state["preview_ids"] = [str(pool["id"].iloc[rng.integers(len(pool))])]
current = _picks() or [str(all_ids.iloc[0])]
query = st.text_input("Find images by id", key="pp_find", on_change=_add_typed_id,
                      placeholder="type an id, or part of one",
                      help=f"An exact id is added to the images below; part of one lists up to {MAX_OPTIONS} "
                           f"matching ids to pick from ({len(all_ids):,} images in all).")
matches = matching_ids(all_ids, query)
options = current + [m for m in matches if m not in current]
if query.strip() and not matches:
    st.caption(f"No id contains '{plain(query)}'.")
picked = st.multiselect(f"Images (up to {MAX_PICKS}; or send some from the Population gallery)", options,
                        default=current, max_selections=MAX_PICKS, format_func=_label,
                        key=f"pp_ids_{'-'.join(current)}")
if picked != current:  # the picks outlive a new search (which changes the options)
    st.session_state["preview_ids"] = picked
if not picked:
    st.info("Pick at least one image.")
    st.stop()


# ------------------------------------------------------------------ before / after
for ident in picked:
    path = paths[str(ident)]
    img = decoded(path)
    st.markdown(f"#### {plain(_label(ident))}")  # the id is the label CSV's text
    if isinstance(img, str):
        st.error(plain(img, 600))
        continue
    view, counts0 = display_view(path, file_token(path))
    out = prepare(img, cfg)
    tensor = array_input(out, norm, cpu)[0, 0].numpy()  # exactly what the engine feeds the model
    left, right = st.columns(2)
    with left:
        st.image(view, caption=f"original {img.shape[1]}x{img.shape[0]}", width="stretch")
        st.plotly_chart(intensity_histogram(img, "Original intensities", (0.0, 1.0), counts0), width="stretch",
                        key=f"h0-{ident}")
    with right:
        st.image(out, caption=f"preprocessed {cfg.size}x{cfg.size} ({cfg.resize}, {cfg.contrast})", width="stretch")
        st.plotly_chart(intensity_histogram(out.astype(np.float32) / 255.0, "Preprocessed intensities", (0.0, 1.0)),
                        width="stretch", key=f"h1-{ident}")
        how = ("per-image (zero mean, unit sd)" if norm is None
               else f"{arch}'s mean {norm[0]:.3f} / sd {norm[1]:.3f}")
        st.caption(f"model input after {how} normalisation: mean {tensor.mean():+.3f}, "
                   f"sd {tensor.std():.3f}, range [{tensor.min():.3f}, {tensor.max():.3f}]")
        stats = pd.DataFrame([{"image": ident, "architecture": arch, "normalize": cfg.normalize,
                               "mean": float(tensor.mean()), "sd": float(tensor.std()),
                               "min": float(tensor.min()), "max": float(tensor.max())}])
        st.dataframe(safe_table(stats), hide_index=True, key=f"input-stats-{ident}")

# ------------------------------------------------------------------ augmentation grid
st.subheader("Augmented samples")
first_path = paths[str(picked[0])]
if isinstance(decoded(first_path), np.ndarray):
    if augmentation(cfg) is None:
        st.info("All augmentations are off: training sees the preprocessed image unchanged.")
    else:
        samples = augmented(first_path, file_token(first_path), json.dumps(cfg.to_dict(), sort_keys=True),
                            st.session_state.get("pp_aug_seed", 0))
        if st.button("New samples", key="pp_aug_new"):
            st.session_state["pp_aug_seed"] = st.session_state.get("pp_aug_seed", 0) + 1
            st.rerun()
        cols = st.columns(4)
        for i, s in enumerate(samples):
            cols[i % 4].image(s, caption=f"sample {i + 1}", width="stretch")

# ------------------------------------------------------------------ save
st.subheader("Save this config")
c1, c2 = st.columns([3, 1])
name = c1.text_input("Name (letters, digits, - and _)", key="pp_save_name", placeholder="clahe-256")
if c2.button("Save", key="pp_save", disabled=not name.strip()):
    try:
        path = save_config(name.strip(), cfg)
    except ValueError as exc:
        st.error(plain(exc, 600))
    else:
        st.success(f"Saved as '{plain(name)}' ({plain(path.name)}); training can use it with "
                   f"--config {plain(name)}.")
st.json(cfg.to_dict(), expanded=False)
st.caption(f"cache key {cfg.cache_key()}: images preprocessed with this geometry and contrast are cached once "
           "and reused by training and embedding; augmentation and normalisation run on the fly.")
