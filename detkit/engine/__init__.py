"""Training: the solver (SGD, learning-rate schedule), the training loop and atomic, exactly resumable checkpoints."""
from detkit.engine.checkpoint import load_checkpoint, save_checkpoint
from detkit.engine.solver import build_lr_scheduler, build_optimizer
from detkit.engine.trainer import Trainer

__all__ = ["Trainer", "build_lr_scheduler", "build_optimizer", "load_checkpoint", "save_checkpoint"]
