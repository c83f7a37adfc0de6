"""Clusters: do unsupervised clusters of CNN embeddings group the children by sex, by age,
or by something else?

The embeddings, the UMAP map and k-means run as a background job (``h2a jobs``): the page
asks for it and returns at once, shows its progress while it runs, and fills in when it
is done. The same settings asked again, by anyone, show the same job or its answer."""

import streamlit as st

from h2a.analysis.cluster_config import PRETRAINED_PREPROCESS
from h2a.app.cluster_charts import age_by_cluster, cluster_map, k_sweep_chart, share_male_by_cluster
from h2a.app.cluster_ui import (
    SETTING_FIELDS,
    SOURCE_PRETRAINED,
    clusters_job,
    clusters_result,
    composition_table,
    image_grid,
    job_progress,
    selected_ids,
    setting_defaults,
    settings_widgets,
)
from h2a.app.plain import plain, safe_table
from h2a.app.state import require_dataset
from h2a.data.preprocess import PreprocessConfig
from h2a.exports import csv_bytes
from h2a.run import list_runs

active = require_dataset()
ds = active.ds

st.title("Clusters of CNN embeddings")
st.caption("Each image becomes a vector (the CNN's pooled last feature map); UMAP draws the vectors on a 2-D map "
           "and k-means groups them without looking at any label. Then we ask how the groups line up with sex "
           "and bone age. k-means also runs on the full embedding, so the answer does not rest on the 2-D map.")

# ------------------------------------------------------------------ inputs
# The form's last submitted values live under CL_SAVED as well as in the widgets: Streamlit
# drops a widget's state when the page is left, and coming back must show the same job.
# The clustering settings' keys and defaults come from ClusterConfig's declarations.
DEFAULTS = {"cl_source": SOURCE_PRETRAINED, "cl_size": PRETRAINED_PREPROCESS["size"], **setting_defaults()}
CL_SAVED = "cl_saved"
runs = [r for r in list_runs() if r.has_model]
sources = [SOURCE_PRETRAINED] + [r.name for r in runs]
saved = st.session_state.get(CL_SAVED, {})
for key, default in DEFAULTS.items():
    if key not in st.session_state:
        st.session_state[key] = saved.get(key, default)
if st.session_state["cl_source"] not in sources:  # a run deleted since
    st.session_state["cl_source"] = SOURCE_PRETRAINED
with st.form("cluster_form"):
    c1, c2, c3 = st.columns([2, 1, 1])
    source = c1.selectbox("Embedding source", sources, key="cl_source",
                          format_func=lambda s: "ImageNet-pretrained EfficientNet-Lite0" if s == SOURCE_PRETRAINED
                          else f"trained run: {s}")
    size = c2.select_slider("Image size (pretrained)", [64, 96, 128, 160, 192, 224], key="cl_size",
                            help="a trained run always embeds at its own preprocessing")
    # k beside the source, the other settings on the row below (label, help, range: declared once)
    config = settings_widgets([c3, *st.columns(len(SETTING_FIELDS) - 1)])
    computed = st.form_submit_button("Compute", type="primary",
                                     help="runs as a background job: it keeps going if you leave the page")
st.session_state[CL_SAVED] = {key: st.session_state[key] for key in DEFAULTS}

# ------------------------------------------------------------------ the job
# Asking is cheap: the embeddings, UMAP and k-means run in a background job shared by every
# session that asks the same question; a finished one is shown at once.
pp = PreprocessConfig(**{**PRETRAINED_PREPROCESS, "size": int(size)}) if source == SOURCE_PRETRAINED else None
try:
    job = clusters_job(ds, source, pp, config)
    state = job.status()
    loaded = clusters_result(job) if state.get("status") == "finished" else None
    if computed and loaded is None and state.get("status") not in ("starting", "running"):
        job = clusters_job(ds, source, pp, config, restart=True)  # Compute starts a failed/stopped job again
        state = job.status()
except (FileNotFoundError, ValueError, OSError) as exc:
    st.error(f"Could not start the clusters job: {plain(exc, 600)}")
    st.stop()

if loaded is None:
    status = state.get("status")
    if status in ("starting", "running"):
        st.info("Computing the embeddings, the UMAP map and k-means in the background. This page fills in "
                "when the job is done; you can leave it and come back.", icon=":material/hourglass_top:")
        job_progress(str(job.dir))
    elif status == "cancelled":
        st.warning(f"The clusters job `{job.name}` was cancelled. Press **Compute** to start it again.")
    elif status == "stopped":
        st.warning(f"The clusters job `{job.name}` stopped before finishing (its process ended: killed, or the "
                   "server restarted). Press **Compute** to start it again.")
    elif status == "failed":
        st.error(f"The clusters job `{job.name}` failed: {plain(state.get('message'), 1000)}. Change the settings, "
                 "or press **Compute** to try again.")
        with st.expander("Job log"):
            st.code(job.log_tail(30) or "(empty)")
    else:
        st.warning(f"The clusters job `{job.name}` has no result ({status}). Press **Compute** to start it.")
    st.stop()

frame, scores, sw, result = loaded
emb_info = result.get("embedding") or {}
full = scores["full"]
st.caption(f"{result['n']:,} images · {emb_info.get('dim')}-d embeddings from {plain(emb_info.get('source'), 300)}, "
           f"computed on {plain(emb_info.get('device'))} ({emb_info.get('images_per_s')} images/s) · map and "
           f"clusters from background job `{job.name}` ({result.get('seconds', 0):.0f} s), kept on disk: the same "
           "settings show at once")


def _f(v, spec=".2f"):
    if v is None:
        return "n/a"
    text = format(v, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


# ------------------------------------------------------------------ scores
st.subheader("Do the clusters follow sex?")
cols = st.columns(5)
cols[0].metric("ARI vs sex (map)", _f(scores["ari_sex"]),
               help="adjusted Rand index: 0 = chance, 1 = the clusters are the sexes")
cols[1].metric("ARI vs sex (full)", _f(full["ari_sex"]), help="k-means on the full standardised/PCA embedding")
cols[2].metric("NMI vs sex (map / full)", f"{_f(scores['nmi_sex'])} / {_f(full['nmi_sex'])}")
cols[3].metric("Purity (map / full)", f"{_f(scores['purity_sex'])} / {_f(full['purity_sex'])}",
               help=f"one big cluster would score {_f(scores['purity_baseline'])}")
cols[4].metric("Age variance explained", f"{_f(scores['boneage_eta2'])} / {_f(full['boneage_eta2'])}",
               help="share of the bone-age variance explained by the clusters (eta squared), map / full")
rho = scores.get("umap_spearman_boneage") or [None, None]
verdict = scores["verdict"]  # the core's answer, the same `h2a cluster --json` reports
st.info(f"**{verdict['reason']}** In words: the clusters follow sex **{verdict['sex']['strength'] or 'n/a'}** "
        f"(ARI {_f(scores['ari_sex'])} on the map, {_f(full['ari_sex'])} on the full embedding; purity "
        f"{_f(scores['purity_sex'])} against {_f(scores['purity_baseline'])} for one big cluster) and bone age "
        f"**{verdict['age']['strength'] or 'n/a'}**: they explain {100 * (scores['boneage_eta2'] or 0):.0f}% (map) and "
        f"{100 * (full['boneage_eta2'] or 0):.0f}% (full) of the bone-age variance, and the map's axes correlate with "
        f"bone age at Spearman {_f(rho[0], '+.2f')} and {_f(rho[1], '+.2f')}. Silhouette {_f(scores['silhouette'])} "
        f"(map) / {_f(full['silhouette'])} (full)." + (" This is synthetic demo data." if ds.synthetic else ""),
        icon=":material/insights:")

# ------------------------------------------------------------------ map + selection
color = st.radio("Colour the map by", ["cluster", "cluster_full", "sex", "boneage"], horizontal=True, key="cl_color",
                 format_func={"cluster": "cluster (k-means on the map)", "cluster_full": "cluster (k-means on the full "
                              "embedding)", "sex": "sex", "boneage": "bone age"}.get)
fig = cluster_map(frame, color,
                  f"UMAP map of {len(frame):,} images (click a point; box or lasso select in the toolbar)")
event = st.plotly_chart(fig, width="stretch", key="cl_map", on_select="rerun",
                        selection_mode=("points", "box", "lasso"))
picked = selected_ids(event)
paths = ds.paths_by_id()
info = frame.drop_duplicates("id").set_index("id")
st.subheader(f"Selected images ({len(picked)})")
if picked:
    sel = info.loc[[i for i in picked if i in info.index]]
    st.caption(f"{len(sel)} images · {100 * (sel['sex'] == 'male').mean():.0f}% male · bone age "
               f"{sel['boneage'].mean():.0f} mo on average ({sel['boneage'].min():.0f}-{sel['boneage'].max():.0f})")
    image_grid(picked, paths, info)
else:
    st.caption("Click a point to see its radiograph, or pick box or lasso select in the map's toolbar and "
               "draw around a group.")

# ------------------------------------------------------------------ composition
st.subheader("Cluster composition")
left, right = st.columns(2)
left.markdown("**k-means on the 2-D map**")
left.dataframe(safe_table(composition_table(scores)), hide_index=True, width="stretch")
right.markdown(f"**k-means on the {full['space']}**")
right.dataframe(safe_table(composition_table(full)), hide_index=True, width="stretch")
left, right = st.columns(2)
left.plotly_chart(age_by_cluster(frame), width="stretch")
right.plotly_chart(share_male_by_cluster(frame), width="stretch")

# ------------------------------------------------------------------ choosing k
st.subheader("Choosing k")
st.plotly_chart(k_sweep_chart(sw), width="stretch")

csv = csv_bytes(frame)
st.download_button("Download coordinates and clusters (CSV)", csv, file_name=f"{ds.name}-clusters-k{config.k}.csv",
                   mime="text/csv", key="cl_download")
