"""Inference API: serves `models:/diabetes-readmission@champion`, follows the alias, logs every prediction."""

__version__ = "0.3.0"
