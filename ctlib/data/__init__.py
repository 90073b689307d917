"""Datasets, sample rates and views."""
from .base import ClassificationDataset, DatasetError
from .registry import available, build_dataset, get_builder, register
from . import datasets  # noqa: F401  (registers the eleven on-disk datasets)
from .datasets import DATASETS
from .sampling import SAMPLE_RATES, sample_per_class, split_validation
from .views import IMAGENET_MEAN, IMAGENET_STD, MultiView, eval_view, train_view, training_views

__all__ = ["ClassificationDataset", "DatasetError", "available", "build_dataset", "get_builder", "register",
           "DATASETS", "SAMPLE_RATES", "sample_per_class", "split_validation", "IMAGENET_MEAN", "IMAGENET_STD",
           "MultiView", "eval_view", "train_view", "training_views"]
