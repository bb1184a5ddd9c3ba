"""Models: the registry of specs and their loading."""

from uqflow.models.loading import LoadedModel, load_model, unload
from uqflow.models.registry import MODELS, ModelSpec, get_model, load_registry_file

__all__ = ["MODELS", "LoadedModel", "ModelSpec", "get_model", "load_model", "load_registry_file", "unload"]
