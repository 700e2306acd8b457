"""Backbones: one registry of architectures and one uniform, staged classifier (or an
ensemble of them)."""
from .classifier import StagedClassifier, stage_tap
from .ensemble import ProbeEnsemble
from .registry import (ArchError, InputSpec, archs_by_family, build_model, check_arch, get_arch,
                       input_spec, list_archs, member_names)
from .spec import ArchSpec, WeightsError

__all__ = ["ArchError", "ArchSpec", "InputSpec", "ProbeEnsemble", "StagedClassifier",
           "WeightsError", "archs_by_family", "build_model", "check_arch", "get_arch",
           "input_spec", "list_archs", "member_names", "stage_tap"]
