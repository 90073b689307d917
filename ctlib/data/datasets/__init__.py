"""The eleven on-disk datasets of the paper's protocol, registered on import.

``cub200`` (official layout, our loader), ``stanford_cars``, ``aircraft``, ``oxford_pets``,
``flowers102``, ``dtd``, ``caltech101``, ``food101``, ``sun397``, ``cifar10``, ``cifar100``
(torchvision's classes and layouts), each also from TLlib's ``image_list/`` layout where TLlib
ships one. Layouts, splits and licences: data/README.md.
"""
from . import cub, torchvision_sets  # noqa: F401  (registration)
from .builder import LAYOUTS
from .sample_lists import cache_dir

DATASETS = tuple(LAYOUTS)

__all__ = ["DATASETS", "LAYOUTS", "cache_dir"]
