"""The engine: the training loop (trainer.py), solver, exactly resumable checkpoints, run folder, stages and
torchrun's process group. It takes built modules and plain arguments; it never sees a Config.

Import the submodule you need (detkit.engine.trainer.Trainer, ...): importing the package loads nothing, so the
inference path (which uses run_dir and checkpoint) loads no training code.
"""
