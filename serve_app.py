"""What ``h2a serve`` runs: the app behind the HTTP half of the password gate.

``streamlit run serve_app.py`` finds ``app`` below (an ``st.App``) and serves it with
uvicorn; ``streamlit_app.py`` stays the script every session runs. The middleware
(``h2a.app.http_gate.HttpGate``) refuses uploads, media and metrics to browsers that
have not signed in; see docs/serving.md. ``streamlit run streamlit_app.py`` still works
for development, without this gate.
"""

import streamlit as st
from starlette.middleware import Middleware

from h2a.app.http_gate import HttpGate

app = st.App("streamlit_app.py", middleware=[Middleware(HttpGate)])
