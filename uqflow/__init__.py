"""uqflow: single-pass uncertainty of LLM answers, tracked in MLflow."""

__version__ = "0.1.0"
