"""Federated learning: the client LightningModule, update capture, FedAvg, the engines (in-process, NVFlare), the run layout."""
