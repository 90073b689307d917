"""Fine-tuning methods behind one interface (see base.py)."""
from .base import Method, PrepareContext
from .co_tuning import CoTuning, CoTuningSettings
from .concept_tuning import ConceptTuning, ConceptTuningSettings
from .delta import DELTA, DELTASettings
from .erm import ERM, ERMSettings
from .lwf import LWF, LWFSettings

METHODS = {m.name: m for m in (ERM, ConceptTuning, CoTuning, LWF, DELTA)}


def build_method(name: str, backbone, num_classes: int, image_size: int, settings: dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {sorted(METHODS)}")
    cls = METHODS[name]
    return cls(backbone, num_classes, image_size, cls.make_settings(settings))


__all__ = ["Method", "PrepareContext", "ConceptTuning", "ConceptTuningSettings", "ERM", "ERMSettings", "CoTuning",
           "CoTuningSettings", "LWF", "LWFSettings", "DELTA", "DELTASettings", "METHODS", "build_method"]
