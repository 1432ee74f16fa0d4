"""Tiny random-weight checkpoints of the supported model families, for tests and offline demos."""

from .build import ARCHS, SIZES, build_tiny_model, builder_version, cached_tiny_model

__all__ = ["ARCHS", "SIZES", "build_tiny_model", "builder_version", "cached_tiny_model"]
