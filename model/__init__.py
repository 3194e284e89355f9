"""The model layer: client models by name or import path, and the BatchNorm facts every layer above relies on."""
