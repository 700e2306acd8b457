"""Backbones: one registry of architectures and one uniform, staged classifier."""
from .classifier import StagedClassifier
from .registry import (ArchError, archs_by_family, build_model, check_arch, get_arch,
                       list_archs)
from .spec import ArchSpec, WeightsError

__all__ = ["ArchError", "ArchSpec", "StagedClassifier", "WeightsError", "archs_by_family",
           "build_model", "check_arch", "get_arch", "list_archs"]
