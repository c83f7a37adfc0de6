"""H2A (Hand-to-Age): the Streamlit entry point. Run: streamlit run streamlit_app.py"""

import streamlit as st

from h2a.app.auth import is_unlocked, require_password
from h2a.app.warmup import freeze_imports, warm_imports
from h2a.server import configure_logging, log_page_error

st.set_page_config(page_title="H2A · Hand-to-Age", page_icon=":material/back_hand:", layout="wide")
configure_logging()
warm_imports()  # PyTorch and Plotly load in the background, not in the first page that needs them


class PageError(Exception):
    """What the browser sees of a page's failure: an id, never the traceback (it is in the log)."""

    alternate_name = "Error"

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
        st.Page("app_pages/studies.py", title="Studies", icon=":material/science:"),
    ],
    "Questions": [
        st.Page("app_pages/sex.py", title="Sex from the image", icon=":material/wc:"),
        st.Page("app_pages/clusters.py", title="Clusters of embeddings", icon=":material/scatter_plot:"),
    ],
}

# The page files live in app_pages/, not pages/, so Streamlit's legacy directory routing
# stays off: every URL, even a fresh server's first request, goes through this router.
# Locked, the menu is hidden and the password form replaces every page (the URL's page
# opens once the password is entered).
page = st.navigation(PAGES, position="sidebar" if is_unlocked() else "hidden")
require_password()
try:
    page.run()
except Exception as exc:  # st.stop / st.rerun are BaseExceptions and pass through
    error_id = log_page_error(exc, where=page.title)
    # An exception element that was never raised carries no traceback: the id and a
    # fixed sentence only. (Tests still see it as ``at.exception``.)
    st.exception(PageError(f"Something went wrong (error id {error_id}); the server log has the details."))
finally:
    freeze_imports()  # a page that imported a library: its objects leave the post-run GC's walk
