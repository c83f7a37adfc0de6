"""Predict bone age: radiographs in; bone age with an interval, a heat map and clinical context out."""

from datetime import date

import pandas as pd
import streamlit as st

from h2a import RESEARCH_NOTE
from h2a.app import predict_ui as ui
from h2a.app.plain import cut, plain, safe_table
from h2a.predict.clinical import MAX_AGE_YEARS, parse_date
from h2a.predict.inputs import request_row
from h2a.predict.predictor import DEFAULT_TTA
from h2a.predict.report import batch_csv

st.title("Predict bone age")
st.caption("Upload one or more left-hand radiographs (PNG, JPEG, TIFF or DICOM). Sex is required; add the date "
           f"of birth and exam date (or the age) to compare with the Greulich-Pyle reference. {RESEARCH_NOTE}")

runs = ui.bone_age_runs()
if not runs:
    ui.offer_demo_training()
    st.stop()

# ------------------------------------------------------------------ model
labels = {ui.run_label(r): r for r in runs}
c1, c3, c2 = st.columns([3, 1.3, 1])
chosen = c1.multiselect("Model run(s)", list(labels), default=[next(iter(labels))], key="predict_runs",
                        help="The best validated bone-age run is preselected (models trained on real images, "
                             "the shipped ones included, before synthetic-demo runs); several runs form an "
                             "ensemble.")
site_label = c3.selectbox("Site profile", ui.site_options([labels[c].path for c in chosen]), key="predict_site",
                          help="How the model is adapted to where the image comes from (h2a adapt). auto: a "
                               "site the run declares for images much larger than its training images (the "
                               "shipped model's 'fullres') applies to those, the model as trained to the rest.")
tta = int(c2.number_input("Test-time augmentations", 1, 32, DEFAULT_TTA, key="predict_tta",
                          help="Augmented copies per image (the run's own flip/shift/rotation/zoom ranges) "
                               f"behind the estimate; 1 = none. The conformal interval was calibrated with "
                               f"{DEFAULT_TTA}: another number makes its coverage approximate."))
if not chosen:
    st.info("Choose at least one model run.")
    st.stop()
paths = [labels[c].path for c in chosen]
site = ui.site_value(site_label)
backend = "onnx" if st.toggle("Run through ONNX (onnxruntime)", key="predict_onnx",
                              help="The run's ONNX export (written next to its weights on first use) instead of "
                                   "PyTorch: the same preprocessing, copies and interval; outputs within 0.001 "
                                   "months of PyTorch's. The heat map still comes from PyTorch.") else "torch"
for c in chosen:
    if labels[c].shipped:
        card = ui.model_card(labels[c].path)
        if card:
            with st.expander(f"Model card: {plain(labels[c].name)} (shipped with H2A)"):
                st.markdown(card.split("---", 2)[-1])

# ------------------------------------------------------------------ files
uploads = st.file_uploader("Radiographs", type=["png", "jpg", "jpeg", "tif", "tiff", "dcm", "dicom"],
                           accept_multiple_files=True, key="predict_files")
if not uploads:
    st.info("Upload a radiograph to start. From a DICOM, sex and dates are read from the header for you to "
            "confirm; names, IDs and other identifying tags are never read or shown.")
    st.stop()

files = [(u.name, u.getvalue()) for u in uploads]
digests = tuple(ui.digest(data) for _, data in files)
facts = [ui.prefill(d, name, data) for d, (name, data) in zip(digests, files)]


if len(files) == 1:
    name, data = files[0]
    f = facts[0]
    key = digests[0][:12]
    if f:  # tag values are the file's text: shown as text, cut (plain)
        st.caption(f"From the DICOM header: sex **{plain(f.get('patient_sex') or 'not recorded')}**, date of birth "
                   f"**{plain(f.get('dob') or 'not recorded')}**, exam date "
                   f"**{plain(f.get('exam_date') or 'not recorded')}**"
                   + (f", age **{plain(f['patient_age'], 40)}**" if f.get("patient_age") else "")
                   + ". Check them below.")
    with st.form(f"predict-form-{key}"):
        sex = st.radio("Sex (required)", ui.SEXES, index=ui.SEXES.index(f["sex"]) if f.get("sex") else None,
                       horizontal=True, key=f"sex-{key}",
                       help="Bone age and its reference are sex-specific, so H2A never guesses it.")
        c = st.columns(3)
        dob = c[0].date_input("Date of birth", value=parse_date(f.get("dob")), min_value=date(1900, 1, 1),
                              max_value=date.today(), format="YYYY-MM-DD", key=f"dob-{key}")
        exam = c[1].date_input("Exam date", value=parse_date(f.get("exam_date")), min_value=date(1900, 1, 1),
                               max_value=date.today(), format="YYYY-MM-DD", key=f"exam-{key}")
        age = c[2].number_input("…or age at exam (months)", min_value=0.0, max_value=float(MAX_AGE_YEARS * 12),
                                value=f.get("age_months"), step=1.0, key=f"age-{key}",
                                help="Used when the dates are not both given.")
        submitted = st.form_submit_button("Estimate bone age", type="primary")
    if submitted:
        if sex is None:
            st.error("Choose the sex (female or male): it is required, and H2A never guesses it.")
        elif dob and exam and exam < dob:
            st.error("The exam date is before the date of birth.")
        else:
            st.session_state["predict_request"] = {"digests": digests,
                                                   "rows": [request_row(f, sex, dob, exam, age)]}
else:
    table = pd.DataFrame({
        "file": [n for n, _ in files],
        "sex": [f.get("sex") for f in facts],
        "date of birth": [parse_date(f.get("dob")) for f in facts],
        "exam date": [parse_date(f.get("exam_date")) for f in facts],
        "age at exam (months)": [f.get("age_months") for f in facts],
    })
    st.caption("Sex and dates come from the DICOM headers where present; fill in or correct the rest. "
               "A file without a sex is not predicted (H2A never guesses it).")
    with st.form("predict-batch-form"):
        fill = st.radio("Sex for every file that has none in the table", ui.SEXES, index=None, horizontal=True,
                        key="predict_fill_sex")
        edited = st.data_editor(  # safe_table: the toolbar's CSV download exports these cells
            safe_table(table), hide_index=True, disabled=["file"], key=f"predict-editor-{hash(digests)}",
            width="stretch",
            column_config={
                "sex": st.column_config.SelectboxColumn("sex", options=ui.SEXES),
                "date of birth": st.column_config.DateColumn("date of birth", format="YYYY-MM-DD"),
                "exam date": st.column_config.DateColumn("exam date", format="YYYY-MM-DD"),
                "age at exam (months)": st.column_config.NumberColumn(min_value=0.0, max_value=float(MAX_AGE_YEARS * 12)),
            })
        submitted = st.form_submit_button(f"Estimate bone age for {len(files)} files", type="primary")
    if submitted:
        rows = [request_row(f, row["sex"] if isinstance(row["sex"], str) and row["sex"] else fill,
                            row["date of birth"], row["exam date"], row["age at exam (months)"])
                for (_, row), f in zip(edited.iterrows(), facts)]
        st.session_state["predict_request"] = {"digests": digests, "rows": rows}

request = st.session_state.get("predict_request")
if not request or request["digests"] != digests:
    st.stop()

# ------------------------------------------------------------------ results
bar = st.progress(0.0, text="Predicting…") if len(files) > 1 else None
results = []
for i, ((name, data), row) in enumerate(zip(files, request["rows"])):
    with st.spinner(f"Predicting {plain(name)}…"):
        results.append(ui.predict(paths, data, name, sex=row["sex"], dob=row["dob"], exam_date=row["exam"],
                                  age_months=row["age"], tta=tta, site=site, backend=backend))
    if bar is not None:
        bar.progress((i + 1) / len(files), text=f"Predicted {i + 1}/{len(files)}")
if bar is not None:
    bar.empty()

if len(results) == 1:
    st.divider()
    ui.show_result(results[0], key=digests[0][:12])
else:
    st.subheader("Results")
    frame = ui.results_frame(results)
    n_bad = int(frame["error"].notna().sum())
    st.dataframe(safe_table(frame), hide_index=True, width="stretch")
    if n_bad:
        st.warning(f"{n_bad} of {len(results)} files could not be predicted; the table says why.")
    st.download_button("Download the table (CSV)", data=batch_csv(results), file_name="h2a-bone-age.csv",
                       mime="text/csv", key="predict_csv", on_click="ignore", icon=":material/download:")
    i = st.selectbox("Details for", range(len(results)), format_func=lambda k: cut(results[k].file),
                     key="predict_detail")
    st.divider()
    ui.show_result(results[i], key=f"{i}-{digests[i][:12]}")
