"""Lightning callbacks of the FL client: update capture (the client's outbox) and the BN ground-truth recorder."""
from callbacks.batch_statistics import BatchStatisticsRecorder, batch_stats
from callbacks.update_capture import ClientResult, ClientRound, UpdateCapture, state_delta

__all__ = ["BatchStatisticsRecorder", "ClientResult", "ClientRound", "UpdateCapture", "batch_stats", "state_delta"]
