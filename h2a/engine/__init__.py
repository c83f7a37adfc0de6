"""The training engine shared by the CLI, the pages (as a background job) and torchrun.

``config`` declares every option; ``trainer.train`` opens and closes a run; ``builder``
builds it; ``loop`` iterates; ``callbacks`` do everything else (progress file, early
stopping, divergence guard, cancel/budget, checkpoints); ``tasks`` hold what differs
between bone age and sex; ``state`` is what a checkpoint carries; ``runs`` and ``jobs``
are the run folders and the background processes.
"""
