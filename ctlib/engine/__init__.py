"""Fit and evaluate one run from a config."""
from .config import RunConfig
from .evaluate import accuracy_metrics, evaluate
from .lock import RunLockedError
from .run import ConfigMismatchError, DivergedError, RunFileError, fit, load_model, load_predictions, run_dir

__all__ = ["RunConfig", "accuracy_metrics", "evaluate", "ConfigMismatchError", "DivergedError", "RunFileError",
           "RunLockedError", "fit", "load_model", "load_predictions", "run_dir"]
