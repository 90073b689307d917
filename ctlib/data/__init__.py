"""Datasets, sample rates and views."""
from .base import ClassificationDataset, DatasetError
from .registry import available, build_dataset, register
from .sampling import SAMPLE_RATES, sample_per_class, split_validation
from .views import IMAGENET_MEAN, IMAGENET_STD, MultiView, eval_view, train_view, training_views

__all__ = ["ClassificationDataset", "DatasetError", "available", "build_dataset", "register", "SAMPLE_RATES",
           "sample_per_class", "split_validation", "IMAGENET_MEAN", "IMAGENET_STD", "MultiView", "eval_view",
           "train_view", "training_views"]
