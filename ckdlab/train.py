"""The training loop shared by every backbone and balancing method.

BPR with L2 regularisation and Adam; validation every ``eval_every`` epochs;
early stopping on validation ``select_metric`` (paper: Recall@20, patience 10);
the best weights restored; the test split scored once, at the best epoch,
overall and per modality.
"""
from __future__ import annotations

import copy
import random
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import build_backbone
from .balance import Batch, TrainContext, build_method
from .cache import resolve_cache_dir
from .config import TrainConfig
from .data.samplers import BPRSampler
from .evaluate import evaluate, evaluate_by_modality
from .modality import ModalityInputs
from .result import Result


def resolve_device(device: str) -> torch.device:
    """"auto" picks CUDA when available; "cuda" without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}); use --device cpu or auto")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def train_epoch(model, method, inputs: ModalityInputs, sampler: BPRSampler, optimizer, batch_size: int,
                device: torch.device) -> tuple[float, dict]:
    """One pass over the sampler's training triples; returns the mean loss and mean step logs.

    Shared by the trainer and the benchmark, so the benchmark times exactly what training runs.
    """
    model.train()
    total, steps, logs = 0.0, 0, {}
    for users, pos, neg in sampler.epoch(batch_size):
        batch = Batch(*(torch.as_tensor(a, dtype=torch.long, device=device) for a in (users, pos, neg)))
        loss, step_logs = method.batch_loss(model, inputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(model)
        optimizer.step()
        total += float(loss.detach())
        steps += 1
        for k, v in step_logs.items():
            logs[k] = logs.get(k, 0.0) + v
    return total / max(steps, 1), {k: v / max(steps, 1) for k, v in logs.items()}


class _Trainer:
    """One run's state; ``fit`` is the public entry point."""

    def __init__(self, dataset, config: TrainConfig, cache_dir=None):
        self.dataset, self.config = dataset, config
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.model = build_backbone(config.backbone, dataset, **config.backbone_params).to(self.device)
        self.inputs = ModalityInputs.from_dataset(dataset, self.device).ablate(*config.ablate)
        self.method = build_method(config.method, **config.method_params)
        ctx = TrainContext(dataset, config, self.device, resolve_cache_dir(cache_dir), self.inputs)
        self.method.setup(ctx, self.model)
        # Re-seed after set-up so the student's randomness does not depend on whether
        # the method's set-up (e.g. teacher training) ran or was read from cache.
        torch.manual_seed(config.seed + 1)
        self.sampler = BPRSampler(self.method.training_matrix(dataset), seed=config.seed)

    def _evaluate(self, split: str) -> tuple[dict, dict]:
        cfg = self.config
        overall = evaluate(self.model, self.inputs, self.dataset, split, cfg.ks)
        by_modality = {}
        if cfg.eval_by_modality or split == "test":
            by_modality = evaluate_by_modality(self.model, self.inputs, self.dataset, split, cfg.ks)
        return overall, by_modality

    def _train_epoch(self, optimizer) -> tuple[float, dict]:
        return train_epoch(self.model, self.method, self.inputs, self.sampler, optimizer,
                           self.config.batch_size, self.device)

    def run(self) -> Result:
        cfg = self.config
        history, train_times, eval_times = [], [], []
        best_score, best_epoch, best_state, bad, epoch = -np.inf, 0, None, 0, 0
        if self.model.trainable:
            optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
            bar = tqdm(range(1, cfg.max_epochs + 1), desc=f"{cfg.backbone}/{cfg.method}", unit="epoch",
                       disable=not _show_progress(cfg.progress), leave=False)
            for epoch in bar:
                t0 = time.perf_counter()
                loss, step_logs = self._train_epoch(optimizer)
                train_times.append(time.perf_counter() - t0)
                method_logs = self.method.epoch_end(epoch, self.model)
                if epoch % cfg.eval_every and epoch != cfg.max_epochs:
                    continue
                t1 = time.perf_counter()
                valid, valid_by_modality = self._evaluate("valid")
                eval_times.append(time.perf_counter() - t1)
                history.append({"epoch": epoch, "loss": loss, "valid": valid, "valid_by_modality": valid_by_modality,
                                "seconds": train_times[-1], **step_logs, **method_logs})
                score = valid[cfg.select_metric]
                bar.set_postfix(loss=f"{loss:.4f}", **{cfg.select_metric: f"{score:.4f}"})
                if score > best_score:
                    best_score, best_epoch, bad = score, epoch, 0
                    best_state = copy.deepcopy(self.model.state_dict())
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        break
            bar.close()
            if best_state is not None:
                self.model.load_state_dict(best_state)
        t1 = time.perf_counter()
        valid, valid_by_modality = self._evaluate("valid")
        eval_times.append(time.perf_counter() - t1)
        test, test_by_modality = self._evaluate("test")
        return Result(
            config=cfg.to_dict(), dataset=self.dataset.summary(), best_epoch=best_epoch, epochs_run=epoch,
            valid=valid, test=test, valid_by_modality=valid_by_modality, test_by_modality=test_by_modality,
            history=history,
            timing={"train_seconds_per_epoch": float(np.mean(train_times)) if train_times else 0.0,
                    "eval_seconds": float(np.mean(eval_times)),
                    "total_train_seconds": float(np.sum(train_times)),
                    "device": str(self.device)},
            extras=self.method.extras(),
        )


def fit(dataset, config: TrainConfig | None = None, *, cache_dir=None, return_model: bool = False, **overrides):
    """Train ``config.backbone`` with ``config.method`` on ``dataset``.

    Parameters
    ----------
    dataset : Dataset
    config : TrainConfig, optional
        Defaults to ``TrainConfig()``; keyword ``overrides`` replace its fields.
    cache_dir : path, optional
        Where methods cache what they train once (CKD's teachers).
    return_model : bool
        Also return the trained model (best weights) and its inputs.

    Returns
    -------
    Result, or ``(Result, model, inputs)`` when ``return_model``.
    """
    config = (config or TrainConfig()).replace(**overrides)
    trainer = _Trainer(dataset, config, cache_dir)
    result = trainer.run()
    if return_model:
        return result, trainer.model, trainer.inputs
    return result
