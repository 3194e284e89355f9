"""LightningDataModules over an in-memory image pool: one client's shard, and the global test set."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.sources import ImagePool


class IndexedImages(Dataset):
    """(image, label, pool index): the index lets callbacks record exactly which images a step saw."""

    def __init__(self, pool: ImagePool, indices: torch.Tensor):
        self.pool = pool
        self.indices = indices.long()

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        return self.pool.images[j], self.pool.labels[j], j


class ClientDataModule(pl.LightningDataModule):
    """One client's local data; shuffling is seeded so that a run is reproducible."""

    def __init__(self, pool: ImagePool, indices: torch.Tensor, batch_size: int, seed: int, shuffle: bool = True):
        super().__init__()
        self.dataset = IndexedImages(pool, indices)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=self.shuffle, generator=gen, drop_last=False, num_workers=0)


def test_loader(pool: ImagePool, indices: torch.Tensor, batch_size: int = 256) -> DataLoader:
    return DataLoader(IndexedImages(pool, indices), batch_size=batch_size, shuffle=False, num_workers=0)
