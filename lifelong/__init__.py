"""lifelong: distributed continual learning on Ray + DeepSpeed, tracked in MLflow."""

__version__ = "0.1.0"
