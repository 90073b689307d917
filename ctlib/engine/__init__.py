"""Fit and evaluate one run from a config."""
from .config import RunConfig
from .evaluate import accuracy_metrics, evaluate
from .run import ConfigMismatchError, fit, load_model, run_dir

__all__ = ["RunConfig", "accuracy_metrics", "evaluate", "ConfigMismatchError", "fit", "load_model", "run_dir"]
