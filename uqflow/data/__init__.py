"""Datasets: the registry, adapters to one Example type, and the bundled data files."""

from uqflow.data.datasets import DATASETS, DatasetSpec, LoadedDataset, load_dataset
from uqflow.data.examples import Example

__all__ = ["DATASETS", "DatasetSpec", "Example", "LoadedDataset", "load_dataset"]
