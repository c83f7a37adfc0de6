"""Using a finished run: ``loading.load_run`` (inference-only model with its own input
transform), ``arrays.predict_arrays`` (batched forward passes with TTA), ``metrics``,
``evaluate`` (a run on a dataset) and ``cam`` (Grad-CAM). Shared by validation during
training, the Evaluation and Sex pages, embeddings and prediction."""
