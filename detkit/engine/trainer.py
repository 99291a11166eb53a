"""The training loop: one optimizer step per iteration; AMP, gradient clipping, logging, evaluation, checkpoints.

Names: N images per batch, each a CHW float tensor; a target is a dict with `boxes` (M, 4) float32 x1,y1,x2,y2 in
absolute pixels, `labels` (M,) int64 (background = 0), `ignore` (M,) bool and `image_id`. `iteration` counts
completed optimizer steps, so `last.pth` at iteration k resumes with the (k+1)-th step.
Files under `output_dir`: `last.pth` (full training state), `model_final.pth` (model state_dict), `metrics.jsonl`;
`last.prev.pth` and `last.diverged.pth` (see detkit.engine.safeguards).

What survives what: SIGINT/SIGTERM stop at the end of the current iteration and save `last.pth`; any other error
after training started saves `last.pth` of the last completed iteration (RNG streams as they were then, so
`--resume` stays exact) before it propagates; a non-finite loss saves nothing and puts back the last checkpoint
whose following loss was finite (detkit.engine.safeguards).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from detkit.engine import distributed
from detkit.engine.checkpoint import atomic_torch_save, load_checkpoint, rng_state, save_checkpoint, unwrap_model
from detkit.engine.metrics import MetricsWriter, ThroughputMeter, to_json
from detkit.engine.run_dir import exclusive_run, remove_stale_temporaries
from detkit.engine.safeguards import LastCheckpoints, keep_completed_iterations
from detkit.errors import DetkitError
from detkit.matching import per_image_sampling
from detkit.progress import on_terminal

logger = logging.getLogger(__name__)

AMP_MODES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Iterations left out of img/s at the start of a run (allocator warm-up, cudnn autotuning, worker start-up).
THROUGHPUT_WARMUP_ITERS = 5

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


class Trainer:
    """Train a detector whose train-mode forward `model(images, targets)` returns a dict of scalar losses."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
        loader_factory: Callable[[int], Iterator[Batch]],
        *,
        max_iter: int,
        output_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        checkpoint_period: int = 500,
        log_period: int = 20,
        amp: str = "off",
        grad_clip: float | None = None,
        eval_fn: Callable[[nn.Module], dict] | None = None,
        eval_period: int = 0,
        config: dict | None = None,
        progress: bool = True,
    ) -> None:
        if amp not in AMP_MODES:
            raise DetkitError(f"solver.amp must be one of {', '.join(AMP_MODES)}, got {amp!r}.")
        if max_iter <= 0 or checkpoint_period <= 0 or log_period <= 0 or eval_period < 0:
            raise DetkitError(
                "max_iter, checkpoint_period and log_period must be positive and eval_period >= 0, got "
                f"{max_iter}, {checkpoint_period}, {log_period} and {eval_period}."
            )
        if grad_clip is not None and grad_clip <= 0:
            raise DetkitError(f"solver.grad_clip must be positive or None, got {grad_clip}.")
        self.device = torch.device(device)
        self.model = _data_parallel(model.to(self.device), self.device)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.loader_factory = loader_factory
        self.max_iter = max_iter
        self.output_dir = Path(output_dir)
        self.checkpoint_period = checkpoint_period
        self.log_period = log_period
        if amp == "fp16" and self.device.type != "cuda":
            # CPU autocast runs bf16 (oneDNN, fast with AVX512-BF16/AMX); fp16 with a loss scaler is CUDA only.
            logger.info("Mixed precision fp16 needs CUDA; training in float32 on %s.", self.device)
            amp = "off"
        if amp == "bf16" and self.device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            logger.info("This CPU has no native bf16 (AVX512-BF16 or AMX); training in float32.")
            amp = "off"
        self.amp = amp
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.grad_clip = grad_clip
        self.eval_fn = eval_fn
        self.eval_period = eval_period
        self.config = config
        self.progress = progress
        self._stop_signal: int | None = None
        self.checkpoints = LastCheckpoints(self.output_dir, self._write_checkpoint)

    @property
    def last_checkpoint(self) -> Path:
        """Path of the resumable checkpoint."""
        return self.checkpoints.last

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run iterations up to max_iter (continuing from last.pth when `resume`); return throughput and final loss."""
        is_main = distributed.is_main_process()
        if not is_main:
            return self._train(resume, is_main)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_run(self.output_dir):
            remove_stale_temporaries(self.output_dir)
            return self._train(resume, is_main)

    def _train(self, resume: bool, is_main: bool) -> dict[str, Any]:
        """train() once the output folder is this run's alone."""
        start_iter, final_loss = self._resume() if resume else (0, math.nan)
        if start_iter >= self.max_iter:
            logger.info("%s is at iteration %d >= max_iter %d; nothing to train.",
                        self.last_checkpoint, start_iter, self.max_iter)
            if is_main:
                self._save_final_model()
            return {"train/img_per_s": 0.0, "iterations": start_iter, "final_loss": final_loss}
        metrics = MetricsWriter(self.output_dir, start_iter) if is_main else None
        bar = tqdm(
            total=self.max_iter,
            initial=start_iter,
            dynamic_ncols=True,
            disable=not (self.progress and is_main and on_terminal()),  # off a terminal: log lines (_log)
        )
        redirect = logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext()
        try:
            with redirect, self._signal_handlers():
                result = self._loop(start_iter, metrics, bar)
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        if is_main:
            self.checkpoints.finish()
            self._save_final_model()
        return result

    def _resume(self) -> tuple[int, float]:
        """Restore the full training state from last.pth; return (iteration, loss at that iteration).

        The optimizer's hyperparameters (base lr, momentum, weight decay, ...) stay those it was built with, so a
        changed solver config is used from here on; unchanged ones equal the saved values and resume exactly.
        """
        if not self.last_checkpoint.is_file():
            logger.info("No checkpoint at %s; training from scratch.", self.last_checkpoint)
            return 0, math.nan
        built = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        state = load_checkpoint(
            self.last_checkpoint,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.lr_scheduler,
            scaler=self.scaler if self.scaler.is_enabled() else None,
            restore_rng=True,
        )
        self._keep_built_hyperparameters(built)
        iteration = int(state["iteration"])
        logger.info("Resuming from %s at iteration %d.", self.last_checkpoint, iteration)
        return iteration, float((state.get("extra") or {}).get("loss", math.nan))

    def _keep_built_hyperparameters(self, built: list[dict[str, Any]]) -> None:
        """Put back the hyperparameters the optimizer was built with over those loaded from the checkpoint, and the
        lr the (possibly changed) schedule gives at the loaded iteration; unchanged settings give the same values."""
        for index, (group, own) in enumerate(zip(self.optimizer.param_groups, built)):
            for key, value in own.items():
                if key == "lr" or group.get(key) == value:
                    continue
                if key == "initial_lr":  # the schedule's base: rescale the current (scheduled) lr with it
                    group["lr"] = group["lr"] * value / group["initial_lr"]
                logger.info("Optimizer group %d: %s %s from the config (the checkpoint had %s).",
                            index, key, value, group.get(key))
                group[key] = value
        scheduler = self.lr_scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            scheduler.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
            for group, base, factor in zip(self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)  # as LambdaLR.get_lr computes it
            scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _loop(self, start_iter: int, metrics: MetricsWriter | None, bar: tqdm) -> dict[str, Any]:
        """Run the iterations from start_iter and return the summary; on an error save what can be saved first."""
        self.checkpoints.start()
        progress = {"iteration": start_iter, "saved": start_iter, "rng": rng_state(), "loss": math.nan}
        with keep_completed_iterations(self.checkpoints, progress):
            return self._iterate(start_iter, metrics, bar, progress)

    def _iterate(self, start_iter: int, metrics: MetricsWriter | None, bar: tqdm,
                 progress: dict[str, Any]) -> dict[str, Any]:
        """The iterations; `progress` tracks the last completed iteration, the last saved one and the RNG state."""
        with _isolated_rng(self.device):
            data = self.loader_factory(start_iter)
        meter = ThroughputMeter(skip=min(THROUGHPUT_WARMUP_ITERS, (self.max_iter - start_iter) // 2))
        window: dict[str, float] = {}
        eval_result: dict[str, Any] = {}
        iteration, loss = start_iter, math.nan
        self.model.train()
        while iteration < self.max_iter:
            tic = time.perf_counter()
            try:
                with _isolated_rng(self.device):
                    images, targets = next(data)
            except Exception:
                if self._stop_signal is None:
                    raise
                break  # the signal also stopped the loader's workers; the state is still that of `iteration`
            lr = self.optimizer.param_groups[0]["lr"]
            losses = self._step(images, targets, iteration + 1)
            self.checkpoints.prove()  # this loss was computed from the weights in last.pth, and it is finite
            iteration += 1
            meter.add(len(images) * distributed.get_world_size(), time.perf_counter() - tic)
            loss = sum(losses.values())
            progress.update(iteration=iteration, rng=rng_state(), loss=loss)
            for key, value in {**losses, "total_loss": loss}.items():
                window[key] = window.get(key, 0.0) + value
            if iteration % self.log_period == 0 or iteration == self.max_iter:
                iters, img_per_s, seconds = meter.pop_window()
                record = {k: v / iters for k, v in window.items()}
                self._log(iteration, {**record, "lr": lr, "img_per_s": img_per_s, "time": seconds}, metrics, bar)
                window.clear()
            bar.update(1)
            if self.eval_fn is not None and self.eval_period > 0 and iteration % self.eval_period == 0:
                eval_result = self._evaluate(iteration, metrics)
            if iteration % self.checkpoint_period == 0 or iteration == self.max_iter:
                self.checkpoints.save(iteration, loss)
                progress["saved"] = iteration
            if self._stop_signal is not None:
                break
        if self._stop_signal is not None:
            if progress["saved"] != iteration:
                self.checkpoints.save(iteration, loss)
            logger.warning("Stopped by signal %d after iteration %d: %s saved; --resume continues from there.",
                           self._stop_signal, iteration, self.last_checkpoint)
            if self._stop_signal == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + self._stop_signal)
        return {
            "train/img_per_s": meter.img_per_s(),
            "train/time_s": meter.total_time,
            "iterations": iteration,
            "final_loss": loss,
            **eval_result,
        }

    def _step(self, images: list[torch.Tensor], targets: list[dict[str, Any]], iteration: int) -> dict[str, float]:
        """Run one forward/backward/optimizer step; return the loss values."""
        seeds = [target.get("sample_seed") for target in targets]
        images, targets = _to_device(images, targets, self.device)
        sampling = per_image_sampling(seeds) if None not in seeds else contextlib.nullcontext()
        with sampling, torch.autocast(self.device.type, dtype=AMP_MODES[self.amp], enabled=self.amp != "off"):
            loss_dict = self.model(images, targets)
        # The mean over ranks: the logged loss is the global batch's, and every rank sees the same non-finite one.
        values = distributed.mean_over_ranks(torch.stack([v.detach().float() for v in loss_dict.values()]))
        if not bool(torch.isfinite(values).all()):
            bad = [k for k, v in zip(loss_dict, values.tolist()) if not math.isfinite(v)]
            raise FloatingPointError(
                f"Loss {', '.join(bad)} is not finite at iteration {iteration}; "
                "lower solver.base_lr, set solver.grad_clip, or check the training data."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(sum(loss_dict.values())).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        return dict(zip(loss_dict, values.tolist()))

    def _evaluate(self, iteration: int, metrics: MetricsWriter | None) -> dict[str, Any]:
        """Call eval_fn without disturbing the training RNG stream, log its result, and return to train mode."""
        with _isolated_rng(self.device):
            result = dict(self.eval_fn(unwrap_model(self.model)))
        self.model.train()
        logger.info("Evaluation at iteration %d: %s", iteration, json.dumps(result, default=to_json))
        if metrics is not None:
            metrics.write(iteration, result)
        return result

    def _log(self, iteration: int, record: dict[str, float], metrics: MetricsWriter | None, bar: tqdm) -> None:
        """Write one log record to metrics.jsonl / TensorBoard and to the bar or the log."""
        if metrics is not None:
            metrics.write(iteration, record)
        if not bar.disable:
            bar.set_postfix(
                loss=f"{record['total_loss']:.4f}", lr=f"{record['lr']:.2e}", img_s=f"{record['img_per_s']:.1f}"
            )
        elif metrics is not None:
            eta = datetime.timedelta(seconds=round((self.max_iter - iteration) * record["time"]))
            losses = "  ".join(f"{k}: {v:.4f}" for k, v in record.items() if k.startswith("loss") or k == "total_loss")
            logger.info(
                "iter %d/%d  %s  lr: %.3e  img/s: %.1f  eta: %s",
                iteration, self.max_iter, losses, record["lr"], record["img_per_s"], eta,
            )

    def _write_checkpoint(self, path: Path, iteration: int, loss: float) -> None:
        """Save the resumable training state (model, optimizer, schedule, scaler, RNG streams) to `path`."""
        save_checkpoint(
            path,
            model=unwrap_model(self.model),
            optimizer=self.optimizer,
            scheduler=self.lr_scheduler,
            scaler=self.scaler if self.scaler.is_enabled() else None,
            iteration=iteration,
            config=self.config,
            extra={"loss": loss},
        )

    def _save_final_model(self) -> None:
        """Save {"model": state_dict on CPU, "meta": the class list} to model_final.pth atomically."""
        from detkit.engine.checkpoint import class_meta

        state = {k: v.detach().cpu() for k, v in unwrap_model(self.model).state_dict().items()}
        atomic_torch_save({"model": state, "meta": class_meta(self.config)}, self.output_dir / "model_final.pth")

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into a stop request honoured at the end of the current iteration."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._stop_signal = None

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal == signal.SIGINT and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C stops at once
            self._stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _to_device(
    images: list[torch.Tensor], targets: list[dict[str, Any]], device: torch.device
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Move a batch to `device` and drop the boxes marked `ignore` (and the `ignore` key) from each target."""
    images = [img.to(device, non_blocking=True) for img in images]
    moved = []
    for target in targets:
        target = dict(target)
        target.pop("sample_seed", None)  # the loader's per-sample seed (see Trainer._step), not a model input
        ignore = target.pop("ignore", None)
        if ignore is not None and bool(ignore.any()):
            keep = ~ignore.to(torch.bool)
            num_boxes = len(keep)
            for key, value in target.items():
                if key != "image_id" and torch.is_tensor(value) and value.dim() > 0 and len(value) == num_boxes:
                    target[key] = value[keep]
        moved.append({k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in target.items()})
    return images, moved


@contextlib.contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a block (data loading, evaluation) without advancing the training's global RNG streams."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The model wrapped in DistributedDataParallel when a process group of 2+ ranks exists (else as it is).

    DDP averages gradients over ranks; each rank's losses divide its summed per-sample losses by the global
    sample count over W (distributed.global_mean_count), so the average is the global batch's per-sample mean
    however the anchors / RoIs fall on the ranks (see docs/benchmarks.md, "Data-parallel training").
    """
    if distributed.get_world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
