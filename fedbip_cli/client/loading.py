"""Loading pre-trained models and processors through transformers, quietly and offline."""

from __future__ import annotations

import os


def quiet_transformers() -> None:
    """No download attempts, progress bars or advisory warnings from transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
