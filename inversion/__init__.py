"""Gradient inversion: threat model, functional replay, BN-statistics sources, objective terms, labels."""
