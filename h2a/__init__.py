"""H2A (Hand-to-Age): explore pediatric hand radiographs and bone age.

The core package never imports streamlit; the app layer lives in ``h2a.app``.
Research use only, not for clinical decisions.
"""

__version__ = "0.1.0"

RESEARCH_NOTE = "Research use only, not for clinical decisions."

# What a run can predict; the engine's Task objects (h2a.inference.tasks) implement each one.
TASKS = ("boneage", "sex")
# Each task's headline figure (the metrics key runs are ranked by) and its direction: the
# engine's Task classes and the run listings (which sit below the engine) read it here.
HEADLINE = {"boneage": ("mae", True), "sex": ("auc", False)}  # task -> (metric, lower is better)
