"""Fine-tuning methods behind one interface (see base.py)."""
from .base import Method
from .bi_tuning import BiTuning, BiTuningSettings
from .bss import BSS, BSSSettings
from .concept_tuning import ConceptTuning, ConceptTuningSettings
from .erm import ERM, ERMSettings
from .l2_sp import L2SP, L2SPSettings
from .linear_probe import LinearProbe, LinearProbeSettings
from .scratch import Scratch, ScratchSettings
from .stochnorm import StochNorm, StochNormSettings

METHODS = {m.name: m for m in (ERM, ConceptTuning, LinearProbe, Scratch, L2SP, BSS, StochNorm, BiTuning)}


def build_method(name: str, backbone, num_classes: int, image_size: int, settings: dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {sorted(METHODS)}")
    cls = METHODS[name]
    return cls(backbone, num_classes, image_size, cls.make_settings(settings))


__all__ = ["Method", "BiTuning", "BiTuningSettings", "BSS", "BSSSettings", "ConceptTuning", "ConceptTuningSettings",
           "ERM", "ERMSettings", "L2SP", "L2SPSettings", "LinearProbe", "LinearProbeSettings", "Scratch",
           "ScratchSettings", "StochNorm", "StochNormSettings", "METHODS", "build_method"]
