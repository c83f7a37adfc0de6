"""Upload-and-predict: bone age for image files with uncertainty, checks and clinical context.

Modules (import them directly; this package imports nothing, so ``clinical`` stays light):

* ``inputs``    - sex, chronological age and DICOM header facts (never a guessed sex)
* ``checks``    - cheap image checks (uniform, noise, aspect, colour, DICOM body part/modality)
* ``ood``       - the out-of-distribution reference of a run and the kNN embedding distance
* ``predictor`` - ``Predictor`` (runs loaded once) and ``PredictionResult``
* ``batch``     - ``predict_files`` for the CLI, PDF report paths
* ``clinical``  - Greulich-Pyle reference, SDS, classification
* ``report``    - the one-page PDF and the batch CSV
* ``alerts``    - the coded warnings (``{"code", "message"}``) every stage produces
"""
