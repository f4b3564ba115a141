"""Moved to fer_jax.inference (kept while other modules switch their import):
build_model is fer_jax.inference.loading.build_model, normalize_images and the
Classifier (formerly Predictor) are in fer_jax.inference.classifier."""
from fer_jax.inference.classifier import normalize_images
from fer_jax.inference.loading import build_model

__all__ = ["build_model", "normalize_images"]
