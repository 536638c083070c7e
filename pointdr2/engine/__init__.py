"""Training and evaluation engine: trainer, evaluator, metrics, checkpoints, logging, distributed helpers."""

from pointdr2.engine.checkpoint import load_checkpoint, save_atomic
from pointdr2.engine.evaluator import evaluate
from pointdr2.engine.metrics import ConfusionMatrix, accuracy_metrics, segmentation_metrics
from pointdr2.engine.trainer import TrainingDiverged, TrainingInterrupted, TrainResult, train

__all__ = ["ConfusionMatrix", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "accuracy_metrics", "evaluate",
           "load_checkpoint", "save_atomic", "segmentation_metrics", "train"]
