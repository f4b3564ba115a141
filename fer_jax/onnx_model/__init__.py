"""The models as ONNX graphs: conversion from a Flax model's jaxpr, and an onnxruntime classifier.

- `convert`: a jitted JAX function's jaxpr to an ONNX graph (the primitives our networks use);
- `export`: a checkpoint to an ONNX model taking uint8 (N, 48, 48) faces, giving (N, 7) probabilities;
- `runtime`: such a model run by onnxruntime, with the interface of
  `fer_jax.models.classifier.Classifier`, and a release's shipped file found without JAX.
"""
