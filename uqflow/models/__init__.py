"""Models: the registry of specs and their loading."""

from uqflow.models.loading import LoadedModel, load_model, unload
from uqflow.models.registry import MODELS, ModelSpec

__all__ = ["MODELS", "LoadedModel", "ModelSpec", "load_model", "unload"]
