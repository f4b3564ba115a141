"""Expressions on numpy images from a checkpoint: load the model once, then predict.

    from fer_jax.predictor import ExpressionPredictor
    predictor = ExpressionPredictor("runs/simple_cnn_v1")        # a run's workdir, or None: release/final
    faces = predictor.predict_image(rgb)                         # detect, level, crop, classify
    per_image = predictor.predict_images([rgb1, rgb2])           # all faces in one batched pass
    crops = predictor.predict_faces([face1, face2])              # images that already are faces
    probs = predictor.classify(uint8_48x48_stack)                # (N, 7), columns in CLASS_NAMES order

The documented import path; the implementation is fer_jax.inference.expressions.
"""
from fer_jax.inference.expressions import DetectedFace, ExpressionPredictor, FacePrediction, FaceDetector, as_rgb

__all__ = ["DetectedFace", "ExpressionPredictor", "FacePrediction", "FaceDetector", "as_rgb"]
