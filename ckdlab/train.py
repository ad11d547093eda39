"""The training loop shared by every backbone and balancing method.

BPR with L2 regularisation and Adam; validation every ``eval_every`` epochs;
early stopping on validation ``select_metric`` (paper: Recall@20, patience 10);
the best weights restored; the test split scored once, at the best epoch,
overall and per modality (or never: ``TrainConfig.evaluate_test=False``, for
searches on validation). ``fit(..., on_evaluation=fn)`` calls ``fn(epoch,
valid_metrics)`` after every validation; ``fn`` may raise to stop the run
(a pruner of :mod:`ckdlab.tuning`).

Long runs survive interruption: every ``checkpoint_every`` epochs, and when
SIGINT/SIGTERM arrives, the whole run state is written to a checkpoint
(:mod:`ckdlab.checkpoint`); running the same configuration again resumes from
it and ends with the same numbers as an uninterrupted run. A NaN or Inf loss or
parameter stops the run with :class:`~ckdlab.faults.TrainingDiverged`, keeping
the last good checkpoint.
"""
from __future__ import annotations

import copy
import itertools
import math
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import build_backbone
from .balance import Batch, TrainContext, build_method
from .cache import resolve_cache_dir
from .checkpoint import (CHECKPOINT_FORMAT, capture_rng_states, checkpoint_path, discard_checkpoint,
                         load_checkpoint, restore_rng_states, save_checkpoint, set_aside)
from .config import TrainConfig
from .data.samplers import BPRSampler
from .evaluate import evaluate, evaluate_by_modality
from .faults import CacheWarning, TrainingDiverged, TrainingInterrupted
from .modality import ModalityInputs
from .provenance import numbers_identity, run_provenance
from .result import Result


def resolve_device(device: str) -> torch.device:
    """"auto" picks CUDA when available; "cuda" without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}); use --device cpu or auto")
    return torch.device(device)


def make_optimizer(model, lr: float) -> torch.optim.Optimizer:
    """Adam over every parameter, as one fused kernel per parameter group: the same update as the
    default multi-tensor form (to float rounding) in one pass over the weights instead of several."""
    params = list(model.parameters())
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # torch < 2.4 has no fused Adam on CPU (torch's version is in every result key)
        return torch.optim.Adam(params, lr=lr)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def format_terms(terms: dict) -> str:
    """``loss=nan (kd_loss=0.12, ...)``: a step's loss and the other terms its method logged."""
    rest = ", ".join(f"{k}={v:.4g}" for k, v in terms.items() if k != "loss")
    loss = f"loss={terms['loss']:.4g}" if "loss" in terms else "loss=?"
    return f"{loss} ({rest})" if rest else loss


# -- one epoch ------------------------------------------------------------------------------------

@dataclass
class EpochProgress:
    """Running sums of an epoch's steps.

    Checkpointed mid-epoch, so a resumed epoch reports the same mean loss and
    logs as an uninterrupted one; ``last`` holds the latest step's loss terms
    for divergence messages.
    """

    steps: int = 0
    loss_sum: float = 0.0
    log_sums: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)

    def add(self, loss: float, logs: dict) -> None:
        self.loss_sum += loss
        self.steps += 1
        for k, v in logs.items():
            self.log_sums[k] = self.log_sums.get(k, 0.0) + v
        self.last = {"loss": loss, **logs}

    def means(self) -> tuple[float, dict]:
        n = max(self.steps, 1)
        return self.loss_sum / n, {k: v / n for k, v in self.log_sums.items()}


class NonFiniteLoss(FloatingPointError):
    """A step's loss was NaN or Inf; ``step`` is 0-based within the epoch, ``terms`` its logged terms."""

    def __init__(self, step: int, terms: dict):
        super().__init__(f"non-finite loss at step {step}: {format_terms(terms)}")
        self.step, self.terms = step, dict(terms)


def train_epoch(model, method, inputs: ModalityInputs, sampler: BPRSampler, optimizer, batch_size: int,
                device: torch.device, *, progress: EpochProgress | None = None,
                after_step=None) -> tuple[float, dict]:
    """One pass over the sampler's training triples; returns the mean loss and mean step logs.

    Shared by the trainer and the benchmark, so the benchmark times exactly what training runs.

    ``progress`` continues a partly done epoch: with the sampler's RNG set back
    to the epoch's start, the epoch's batches are drawn again and the
    ``progress.steps`` already trained are skipped (drawing them keeps the RNG
    stream identical). ``after_step(progress)`` runs after every optimizer step.
    A NaN or Inf loss raises :class:`NonFiniteLoss`, checked on the value the
    step already synchronises for the running mean (no extra device sync).
    """
    model.train()
    progress = EpochProgress() if progress is None else progress
    for users, pos, neg in itertools.islice(sampler.epoch(batch_size), progress.steps, None):
        batch = Batch(*(torch.as_tensor(a, dtype=torch.long, device=device) for a in (users, pos, neg)))
        with model.step_scope():  # the step's forward passes share sub-results (Backbone.step_scope)
            loss, step_logs = method.batch_loss(model, inputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.after_backward(model)
        optimizer.step()
        value = float(loss.detach())
        progress.add(value, step_logs)
        if not math.isfinite(value):
            raise NonFiniteLoss(progress.steps - 1, progress.last)
        if after_step is not None:
            after_step(progress)
    return progress.means()


def nonfinite_parameters(model) -> list[str]:
    """Names of the parameters holding a NaN or Inf (one device sync for all of them)."""
    named = list(model.named_parameters())
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p).all() for _, p in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


# -- interruption -------------------------------------------------------------------------------

class _StopSignals:
    """SIGINT/SIGTERM turned into a flag (``signum``) that the loop polls between steps.

    Handlers are installed only in the main thread (others cannot; runs in
    worker threads rely on periodic checkpoints) and only inside the ``with``
    block; the previous handlers come back on exit. A nested run (a CKD
    teacher trained during the student's set-up) inherits a pending request and
    passes one it did not act on back to the enclosing run. A second Ctrl-C
    stops at once, without a checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                outer = _stop_signals_of(self._previous[sig])
                if outer is not None and outer.signum is not None:
                    self.signum = outer.signum
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, exc_type, exc, tb) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        outer = _stop_signals_of(self._previous.get(self.signum))
        if exc_type is None and outer is not None:
            outer.signum = self.signum


def _stop_signals_of(handler) -> _StopSignals | None:
    owner = getattr(handler, "__self__", None)
    return owner if isinstance(owner, _StopSignals) else None


# -- the run --------------------------------------------------------------------------------------

@dataclass
class _LoopState:
    """Where the epoch loop stands; all of it goes into a checkpoint.

    ``epoch`` is the epoch in progress (1-based) and ``progress`` its steps so
    far; ``sampler_rng`` is the sampler's RNG state at the start of ``epoch``,
    from which a resumed run redraws that epoch's batches. ``finished``: early
    stopping or ``max_epochs`` ended training, only the final evaluation is left.
    """

    epoch: int = 1
    progress: EpochProgress = field(default_factory=EpochProgress)
    sampler_rng: dict | None = None
    history: list = field(default_factory=list)
    train_times: list = field(default_factory=list)
    eval_times: list = field(default_factory=list)
    best_score: float = -np.inf
    best_epoch: int = 0
    best_state: dict | None = None
    bad: int = 0
    finished: bool = False

    def to_dict(self) -> dict:
        d = dict(vars(self))  # shallow: best_state's tensors are serialised, not copied
        d["progress"] = vars(self.progress)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "_LoopState":
        d = dict(d)
        d["progress"] = EpochProgress(**d["progress"])
        return cls(**d)


def run_name(config: TrainConfig) -> str:
    """``VBPR/ckd``, or ``VBPR/none without image`` for a uni-modal (teacher) run."""
    name = f"{config.backbone}/{config.method}"
    return f"{name} without {','.join(config.ablate)}" if config.ablate else name


class _Trainer:
    """One run's state; ``fit`` is the public entry point."""

    def __init__(self, dataset, config: TrainConfig, cache_dir=None, stop: _StopSignals | None = None,
                 on_evaluation=None):
        self.dataset, self.config = dataset, config
        self.on_evaluation = on_evaluation
        self.name = run_name(config)
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.method = build_method(config.method, **config.method_params)
        # What the model trains on: its graphs and the sampler come from this (GB withholds its
        # held-out slice); evaluation, cache keys and the checkpoint keep the original dataset.
        self.train_data = self.method.training_data(dataset, config)
        self.model = build_backbone(config.backbone, self.train_data, **config.backbone_params).to(self.device)
        self.inputs = ModalityInputs.from_dataset(dataset, self.device).ablate(*config.ablate)
        ctx = TrainContext(dataset, config, self.device, resolve_cache_dir(cache_dir), self.inputs,
                           train_run=training_runner(cache_dir))
        self.method.setup(ctx, self.model)
        # Re-seed after set-up so the student's randomness does not depend on whether
        # the method's set-up (e.g. teacher training) ran or was read from cache.
        torch.manual_seed(config.seed + 1)
        self.sampler = BPRSampler(self.train_data.train_matrix, seed=config.seed)
        self.optimizer = make_optimizer(self.model, config.lr) if self.model.trainable else None
        self.checkpoint = checkpoint_path(config, dataset, cache_dir)
        self.stop = stop or _StopSignals()  # one never entered never sees a signal
        self.state = _LoopState()
        self._last_step = (1, -1, {})  # (epoch, step, terms) of the latest optimizer step

    # -- checkpoints ----------------------------------------------------------------------------
    def restore(self, saved: dict) -> None:
        """Continue from a checkpoint's state (after a fresh set-up, which it overrides)."""
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {saved.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        if saved.get("numbers") != numbers_identity(self.device):
            # keys already differ for other code; this guards a file copied or renamed by hand
            raise ValueError(f"checkpoint made by other numbers-code {saved.get('numbers')!r}, "
                             f"this run is {numbers_identity(self.device)!r}")
        self.model.load_state_dict(saved["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(saved["optimizer"])
        self.method.load_state_dict(saved["method"])
        self.state = _LoopState.from_dict(saved["loop"])
        if self.state.sampler_rng is not None:
            self.sampler.rng.bit_generator.state = self.state.sampler_rng
        restore_rng_states(saved["rng"])
        self._last_step = (self.state.epoch, self.state.progress.steps - 1, self.state.progress.last)

    def _save(self) -> bool:
        """Checkpoint the run as it stands, never a diverged state (the last good one stays).

        Returns False when the file cannot be written (read-only or full cache
        folder): that is warned about, but does not end a run that could still finish.
        """
        self._check_parameters()
        s = self.state
        if s.progress.steps == 0:  # between epochs: the next epoch starts from the sampler's current state
            s.sampler_rng = self.sampler.rng.bit_generator.state
        try:
            self._write_checkpoint()
        except OSError as exc:
            warnings.warn(CacheWarning(f"cannot write checkpoint {self.checkpoint} ({exc}); "
                                       f"{self.name} goes on without it"), stacklevel=2)
            return False
        return True

    def _write_checkpoint(self) -> None:
        s = self.state
        meta = {**numbers_identity(self.device), "run": f"{self.name} seed {self.config.seed}",
                "dataset": self.dataset.name}
        save_checkpoint(self.checkpoint, {
            "format": CHECKPOINT_FORMAT,
            "run": {"name": self.name, "config": self.config.to_dict(), "dataset": self.dataset.fingerprint,
                    "epoch": s.epoch, "step": s.progress.steps},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "method": self.method.state_dict(),
            "rng": capture_rng_states(self.device),
            "loop": s.to_dict(),
            "numbers": numbers_identity(self.device),
        }, meta=meta)

    def _poll(self) -> None:
        """Act on SIGINT/SIGTERM: checkpoint the exact state and stop with TrainingInterrupted."""
        if self.stop.signum is None:
            return
        saved = self._save()
        s = self.state
        where = f"interrupted at epoch {s.epoch}, step {s.progress.steps}"
        if not saved:
            raise TrainingInterrupted(f"{where}; the state could not be saved", signum=self.stop.signum)
        raise TrainingInterrupted(f"{where}; state saved to {self.checkpoint}",
                                  checkpoint=str(self.checkpoint), signum=self.stop.signum)

    def _after_step(self, progress: EpochProgress) -> None:
        self._last_step = (self.state.epoch, progress.steps - 1, progress.last)
        self._poll()

    # -- divergence -----------------------------------------------------------------------------
    def _diverged(self, epoch: int, step: int, terms: dict, cause: str) -> TrainingDiverged:
        kept = str(self.checkpoint) if self.checkpoint.exists() else None
        return TrainingDiverged(f"{self.name} diverged at epoch {epoch}, step {step}: {cause}; "
                                f"last good checkpoint: {kept or 'none'}",
                                epoch=epoch, step=step, terms=terms, checkpoint=kept)

    def _check_parameters(self) -> None:
        bad = nonfinite_parameters(self.model)
        if bad:
            epoch, step, terms = self._last_step
            raise self._diverged(epoch, step, terms, f"non-finite parameter(s) {', '.join(bad)} "
                                                     f"after {format_terms(terms)}")

    # -- training -------------------------------------------------------------------------------
    def _evaluate(self, split: str) -> tuple[dict, dict]:
        cfg = self.config
        overall = evaluate(self.model, self.inputs, self.dataset, split, cfg.ks)
        by_modality = {}
        if cfg.eval_by_modality or split == "test":
            by_modality = evaluate_by_modality(self.model, self.inputs, self.dataset, split, cfg.ks)
        return overall, by_modality

    def _train_epoch(self, epoch: int) -> tuple[float, dict]:
        s = self.state
        if s.progress.steps == 0:
            s.sampler_rng = self.sampler.rng.bit_generator.state
        try:
            return train_epoch(self.model, self.method, self.inputs, self.sampler, self.optimizer,
                               self.config.batch_size, self.device, progress=s.progress, after_step=self._after_step)
        except NonFiniteLoss as exc:
            raise self._diverged(epoch, exc.step, exc.terms, format_terms(exc.terms)) from None

    def _validate(self, epoch: int, loss: float, logs: dict, bar) -> None:
        """Validation, history entry and early-stopping bookkeeping of one epoch."""
        cfg, s = self.config, self.state
        t1 = time.perf_counter()
        valid, valid_by_modality = self._evaluate("valid")
        s.eval_times.append(time.perf_counter() - t1)
        s.history.append({"epoch": epoch, "loss": loss, "valid": valid, "valid_by_modality": valid_by_modality,
                          "seconds": s.train_times[-1], **logs})
        score = valid[cfg.select_metric]
        bar.set_postfix(loss=f"{loss:.4f}", **{cfg.select_metric: f"{score:.4f}"})
        if score > s.best_score:
            s.best_score, s.best_epoch, s.bad = score, epoch, 0
            s.best_state = copy.deepcopy(self.model.state_dict())
        else:
            s.bad += 1
            s.finished = s.bad >= cfg.patience
        if self.on_evaluation is not None:
            self.on_evaluation(epoch, valid)

    def _run_epoch(self, epoch: int, bar) -> None:
        cfg, s = self.config, self.state
        t0 = time.perf_counter()
        loss, step_logs = self._train_epoch(epoch)
        s.train_times.append(time.perf_counter() - t0)
        self._check_parameters()
        method_logs = self.method.epoch_end(epoch, self.model)
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            self._validate(epoch, loss, {**step_logs, **method_logs}, bar)
        s.epoch, s.progress = epoch + 1, EpochProgress()
        s.finished = s.finished or epoch == cfg.max_epochs
        if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and not s.finished:
            self._save()
        self._poll()

    def _train(self) -> None:
        cfg, s = self.config, self.state
        bar = tqdm(range(s.epoch, cfg.max_epochs + 1), initial=s.epoch - 1, total=cfg.max_epochs,
                   desc=f"{cfg.backbone}/{cfg.method}", unit="epoch", disable=not _show_progress(cfg.progress),
                   leave=False)
        for epoch in bar:
            self._run_epoch(epoch, bar)
            if s.finished:
                break
        bar.close()
        s.finished = True

    def run(self) -> Result:
        cfg, s = self.config, self.state
        if self.on_evaluation is not None:  # evaluations restored from a checkpoint, so a pruner sees them all
            for entry in s.history:
                self.on_evaluation(entry["epoch"], entry["valid"])
        if self.optimizer is not None and not s.finished:
            self._train()
        if s.best_state is not None:
            self.model.load_state_dict(s.best_state)
        t1 = time.perf_counter()
        valid, valid_by_modality = self._evaluate("valid")
        s.eval_times.append(time.perf_counter() - t1)
        test, test_by_modality = self._evaluate("test") if cfg.evaluate_test else ({}, {})
        self._poll()  # a stop requested during the final evaluation: resuming redoes only that
        return Result(
            config=cfg.to_dict(), dataset=self.dataset.summary(include_test=cfg.evaluate_test),
            best_epoch=s.best_epoch, epochs_run=s.epoch - 1,
            valid=valid, test=test, valid_by_modality=valid_by_modality, test_by_modality=test_by_modality,
            history=s.history,
            timing={"train_seconds_per_epoch": float(np.mean(s.train_times)) if s.train_times else 0.0,
                    "eval_seconds": float(np.mean(s.eval_times)),
                    "total_train_seconds": float(np.sum(s.train_times)),
                    "device": str(self.device)},
            extras=self.method.extras(),
            provenance=run_provenance(self.device),
        )


def training_runner(cache_dir=None):
    """``train(dataset, config) -> (Result, model, inputs)`` with this trainer: how methods train helper models.

    Handed to balancing methods in ``TrainContext.train_run`` (CKD's teachers are
    runs of their own, checkpointed and resumable like any other).
    """
    def train(dataset, config):
        return fit(dataset, config, cache_dir=cache_dir, return_model=True)
    return train


def _start(dataset, config: TrainConfig, cache_dir, stop: _StopSignals, resume: bool,
           on_evaluation=None) -> _Trainer:
    """A trainer at the start of the run, or where the run's checkpoint left it."""
    trainer = _Trainer(dataset, config, cache_dir, stop, on_evaluation)
    saved = load_checkpoint(trainer.checkpoint) if resume else None
    if saved is None:
        return trainer
    try:
        trainer.restore(saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        # Verified bytes that do not fit this code (a changed backbone, say): stale, start afresh.
        set_aside(trainer.checkpoint, f"does not fit this run: {type(exc).__name__}: {exc}")
        return _Trainer(dataset, config, cache_dir, stop, on_evaluation)
    s = trainer.state
    print(f"{trainer.name}: resuming from epoch {s.epoch} step {s.progress.steps} ({trainer.checkpoint})",
          file=sys.stderr)
    return trainer


def fit(dataset, config: TrainConfig | None = None, *, cache_dir=None, return_model: bool = False,
        resume: bool = True, on_evaluation=None, **overrides):
    """Train ``config.backbone`` with ``config.method`` on ``dataset``.

    Parameters
    ----------
    dataset : Dataset
    config : TrainConfig, optional
        Defaults to ``TrainConfig()``; keyword ``overrides`` replace its fields.
    cache_dir : path, optional
        Where methods cache what they train once (CKD's teachers) and where the
        run's checkpoint lives (``checkpoints/``); default :func:`ckdlab.cache.resolve_cache_dir`.
    return_model : bool
        Also return the trained model (best weights) and its inputs.
    resume : bool
        Continue from this configuration's checkpoint when there is one (default);
        False starts afresh and overwrites it.
    on_evaluation : callable, optional
        ``on_evaluation(epoch, valid_metrics)`` after every validation evaluation
        during training (and, for a run resumed from a checkpoint, first once for
        each evaluation the checkpoint holds). An exception it raises stops the
        run and propagates (the periodic checkpoint stays); optuna's pruning
        raises ``TrialPruned`` this way. Not called for the final evaluation.

    Returns
    -------
    Result, or ``(Result, model, inputs)`` when ``return_model``.

    Raises
    ------
    TrainingInterrupted
        SIGINT/SIGTERM arrived (main thread only); the state is checkpointed, call again to resume.
    TrainingDiverged
        A NaN/Inf loss or parameter; the last good checkpoint is kept and no result is returned.

    A run that completes deletes its checkpoint.
    """
    config = (config or TrainConfig()).replace(**overrides)
    with _StopSignals() as stop:
        trainer = _start(dataset, config, cache_dir, stop, resume, on_evaluation)
        result = trainer.run()
    discard_checkpoint(trainer.checkpoint)
    if return_model:
        return result, trainer.model, trainer.inputs
    return result
