"""The training engine shared by the CLI, the pages (as a background job) and torchrun.

``config`` declares every option; ``trainer.train`` opens and closes a run; ``builder``
builds it; ``loop`` iterates; ``callbacks`` do everything else (progress file, early
stopping, divergence guard, cancel/budget, checkpoints); ``state`` is what a checkpoint
carries; ``jobs`` are the background processes. What differs between bone age and sex
(``h2a.inference.tasks``) and the run folder (``h2a.run``) sit below the engine.
"""
