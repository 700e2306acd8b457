"""Backbones: one registry of architectures and one uniform, staged classifier."""
from .classifier import StagedClassifier
from .registry import (ArchError, ArchSpec, WeightsError, build_model, check_arch, get_arch,
                       list_archs)

__all__ = ["ArchError", "ArchSpec", "StagedClassifier", "WeightsError", "build_model", "check_arch",
           "get_arch", "list_archs"]
