"""The only part of ``h2a`` that imports streamlit: cached loaders, shared widgets and
figure builders for the page files in ``app_pages/``. Compute stays in the core."""
