"""Judging a model: image-quality metrics, feature extractors, and the HTML report of a run."""
