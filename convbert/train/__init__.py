"""Training: ``convbert-train`` (``python -m convbert.train``) pre-trains and fine-tunes ConvBERT.

See :func:`convbert.train.cli.main` and ``convbert-train --help``.
"""

from __future__ import annotations

from .cli import MODEL_SIZES, build_parser, main, run

__all__ = ["main", "run", "build_parser", "MODEL_SIZES"]
