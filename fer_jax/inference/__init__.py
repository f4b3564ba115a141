"""Inference on restored models: loading a checkpoint, class probabilities, test-time
augmentation, scoring, ensembles and expressions on photos.

- classifier: normalize_images, Classifier (probabilities for uint8 faces);
- tta: TTA_MODES and the views each mode averages over;
- loading: build_model (a config's network) and load_model (a checkpoint's model);
- scoring: SPLIT_CHOICES, select_split, score, evaluate_checkpoint;
- ensemble: averaged members, their scores and the subset search;
- expressions: ExpressionPredictor, faces found in photos and classified;
- files: the frames of image and video files in batched passes, annotated copies' names.
"""
