"""Fine-tuning methods behind one interface (see base.py)."""
from .base import Method, PrepareContext
from .bi_tuning import BiTuning, BiTuningSettings
from .bss import BSS, BSSSettings
from .co_tuning import CoTuning, CoTuningSettings
from .concept_tuning import ConceptTuning, ConceptTuningSettings
from .delta import DELTA, DELTASettings
from .erm import ERM, ERMSettings
from .l2_sp import L2SP, L2SPSettings
from .linear_probe import LinearProbe, LinearProbeSettings
from .lwf import LWF, LWFSettings
from .scratch import Scratch, ScratchSettings
from .stochnorm import StochNorm, StochNormSettings

METHODS = {m.name: m for m in (ERM, LinearProbe, Scratch, L2SP, DELTA, BSS, CoTuning, StochNorm, LWF, BiTuning,
                               ConceptTuning)}


def build_method(name: str, backbone, num_classes: int, image_size: int, settings: dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {sorted(METHODS)}")
    cls = METHODS[name]
    return cls(backbone, num_classes, image_size, cls.make_settings(settings))


__all__ = ["Method", "PrepareContext", "BiTuning", "BiTuningSettings", "BSS", "BSSSettings", "CoTuning",
           "CoTuningSettings", "ConceptTuning", "ConceptTuningSettings", "DELTA", "DELTASettings", "ERM", "ERMSettings",
           "L2SP", "L2SPSettings", "LinearProbe", "LinearProbeSettings", "LWF", "LWFSettings", "Scratch",
           "ScratchSettings", "StochNorm", "StochNormSettings", "METHODS", "build_method"]
