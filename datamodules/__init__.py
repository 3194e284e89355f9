"""Data: image sources (embedded LFW faces, digits, user folders, MedMNIST) and the federated split."""
from datamodules.client import ClientDataModule, IndexedImages, test_loader
from datamodules.federated import ClientSpec, FederatedSplit, SplitConfig, local_steps, make_split, paper9_layout
from datamodules.sources import DataConfig, ImagePool, load_pool

__all__ = [
    "ClientDataModule", "ClientSpec", "DataConfig", "FederatedSplit", "ImagePool", "IndexedImages", "SplitConfig",
    "load_pool", "local_steps", "make_split", "paper9_layout", "test_loader",
]
