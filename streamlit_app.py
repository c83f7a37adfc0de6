"""H2A (Hand-to-Age): the Streamlit entry point. Run: streamlit run streamlit_app.py"""

import streamlit as st

st.set_page_config(page_title="H2A · Hand-to-Age", page_icon=":material/back_hand:", layout="wide")

PAGES = {
    "Explore": [
        st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("app_pages/population.py", title="Population statistics", icon=":material/groups:"),
        st.Page("app_pages/preprocessing.py", title="Preprocessing preview", icon=":material/tune:"),
    ],
    "Models": [
        st.Page("app_pages/training.py", title="Bone-age training", icon=":material/model_training:"),
        st.Page("app_pages/evaluation.py", title="Bone-age evaluation", icon=":material/query_stats:"),
        st.Page("app_pages/predict.py", title="Predict bone age", icon=":material/radiology:"),
    ],
    "Questions": [
        st.Page("app_pages/sex.py", title="Sex from the image", icon=":material/wc:"),
        st.Page("app_pages/clusters.py", title="Clusters of embeddings", icon=":material/scatter_plot:"),
    ],
}

# The page files live in app_pages/, not pages/, so Streamlit's legacy directory routing
# stays off: every URL, even a fresh server's first request, goes through this router.
st.navigation(PAGES).run()
