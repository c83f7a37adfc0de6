"""H2A (Hand-to-Age): the Streamlit entry point. Run: streamlit run streamlit_app.py"""

import streamlit as st

st.set_page_config(page_title="H2A · Hand-to-Age", page_icon=":material/back_hand:", layout="wide")

PAGES = {
    "Explore": [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/population.py", title="Population statistics", icon=":material/groups:"),
        st.Page("pages/preprocessing.py", title="Preprocessing preview", icon=":material/tune:"),
    ],
    "Models": [
        st.Page("pages/training.py", title="Bone-age training", icon=":material/model_training:"),
        st.Page("pages/evaluation.py", title="Bone-age evaluation", icon=":material/query_stats:"),
        st.Page("pages/predict.py", title="Predict bone age", icon=":material/radiology:"),
    ],
    "Questions": [
        st.Page("pages/sex.py", title="Sex from the image", icon=":material/wc:"),
        st.Page("pages/clusters.py", title="Clusters of embeddings", icon=":material/scatter_plot:"),
    ],
}

st.session_state["_h2a_navigation"] = True  # pages check it: see h2a.app.state.app_page
page = st.navigation(PAGES)
goto = st.session_state.pop("_h2a_goto", None)
if goto:
    st.switch_page(goto)  # a page first reached outside the navigation comes back here
page.run()
