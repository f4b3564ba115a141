"""Pieces the command-line entry points share."""
from __future__ import annotations

import os


def quiet_tensorflow() -> None:
    """TensorFlow only feeds data: keep its log lines and GPU claims out of the user's way."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
