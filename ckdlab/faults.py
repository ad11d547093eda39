"""What can go wrong in a long run, as named exceptions and warnings.

Shared by the trainer (checkpoints, divergence guard), the caches (integrity
checks) and the experiment runner (failed runs in a grid).
"""
from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """A NaN or Inf loss or parameter stopped a run.

    ``epoch`` and ``step`` locate the step (1-based epoch, 0-based step within it),
    ``terms`` holds the loss terms logged at that step, ``checkpoint`` the last good
    checkpoint kept on disk (None when the run had none yet).
    """

    def __init__(self, message: str, *, epoch: int, step: int, terms: dict | None = None,
                 checkpoint: str | None = None):
        super().__init__(message)
        self.epoch, self.step = epoch, step
        self.terms = dict(terms or {})
        self.checkpoint = checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped a run after its state was checkpointed; re-run to resume."""

    def __init__(self, message: str, *, checkpoint: str | None = None, signum: int | None = None):
        super().__init__(message)
        self.checkpoint, self.signum = checkpoint, signum


class CacheWarning(UserWarning):
    """A cache entry (result, teacher, checkpoint, graph) was unreadable and is being recomputed."""
