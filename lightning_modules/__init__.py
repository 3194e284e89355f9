"""LightningModules: the FL client, the client models, and the gradient-inversion attack."""
