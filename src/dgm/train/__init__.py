"""Training: one loop for every family, checkpoints, EMA."""
from dgm.train.ema import EMA
from dgm.train.trainer import Callback, TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted

__all__ = ["EMA", "Callback", "TrainConfig", "Trainer", "TrainingDiverged", "TrainingInterrupted"]
