"""Evaluation of text-guided face recognition: embeddings, protocols, plots and the report."""

from tgfr.evaluation.run import evaluate

__all__ = ["evaluate"]
