"""Flax linen models of the study, by registry name."""
from fer_jax.models.registry import MODEL_NAMES, STUDY_MODEL_NAMES, get_model

__all__ = ["MODEL_NAMES", "STUDY_MODEL_NAMES", "get_model"]
