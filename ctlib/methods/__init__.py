"""Fine-tuning methods behind one interface (see base.py)."""
from .base import Method
from .concept_tuning import ConceptTuning, ConceptTuningSettings
from .erm import ERM, ERMSettings

METHODS = {m.name: m for m in (ERM, ConceptTuning)}


def build_method(name: str, backbone, num_classes: int, image_size: int, settings: dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {sorted(METHODS)}")
    cls = METHODS[name]
    return cls(backbone, num_classes, image_size, cls.make_settings(settings))


__all__ = ["Method", "ConceptTuning", "ConceptTuningSettings", "ERM", "ERMSettings", "METHODS", "build_method"]
