"""Counterfactual Knowledge Distillation (paper section 3) as a plug-in over any backbone.

Per step, with M modalities:

1. the backbone's own loss on the full inputs (BPR + L2 + auxiliary), margin ds;
2. for each modality m, the student's *modality channel* (eq. 10): the same
   model on ``inputs.only(m)``, margins ds^m on the training triples (u, i, j)
   and on uniformly sampled generic triples (u, j, k);
3. distillation from the frozen teacher of m: specific hinge on (u, i, j)
   (eq. 11) and tempered BCE on (u, j, k) (eq. 12-13), L^m = lambda_g L_GD^m + L_SD^m
   (eq. 14), each a batch mean;
4. counterfactual re-weighting (eq. 15-18): ITE^m = ds - ds^{without m} per
   triple, gamma^m its batch mean, rho^m = gamma^m / mean_batch(dt^m),
   lambda_m = 1 - rho^m / sum_k rho^k; weights are constants in the backward pass;
5. total (eq. 19): L_backbone + lambda_kd * sum_m lambda_m L^m.

The "without m" forward is keyed by its ablation set, so with two modalities it
*is* the other modality's channel and is never computed twice.

Deviations and choices the paper leaves open
--------------------------------------------
- eq. 17 divides by a sum over the batch; we divide the batch-mean ATE by the
  batch-mean teacher margin (a sum would make rho depend on the batch size).
- A zero or negative rho (a modality that does not help yet, or hurts) is
  clamped to ``rho_floor`` before normalising, so lambda stays in [0, 1]. A
  batch whose mean teacher margin is not positive (a teacher that ranks the
  batch's negatives above its positives on average) gives rho = 0 for that
  modality, so it is clamped the same way instead of flipping sign.
- With ``reweight="released"`` the history and trace still report the paper's
  rho (for comparison across schemes); ``lambda`` there is the batch mean of
  the released per-triple weights, which do not use rho.
- ``reweight="released"`` reproduces the authors' released code instead:
  per-triple coefficients c^m = clamp(ITE^m / ds^m, 1e-8, 10) from the
  student's margins only, weights w^m = M/(M-1) * (1 - c^m / sum_k c^k) (for two
  modalities these sum to 2, as in the code), and the generic loss scaled by
  ``released_generic_scale`` (5) and added to every triple's loss before the
  per-triple weighting.
- ``reweight="none"`` (Table 3's "w/o re-weight") sets every lambda_m = (M - 1) / M:
  uniform weights that sum to M - 1 as eq. 18's do, so the variant removes the
  re-weighting without also scaling the distillation term (for two modalities,
  1/2 each). ``reweight="ones"`` keeps the older all-ones form (sum M), which
  changes lambda_kd's effective size at the same time.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.samplers import uniform_triples
from ..losses import (hinge_distillation, kl_distillation, mse_distillation, tempered_bce_distillation)
from .base import BalanceMethod, Batch, TrainContext, backbone_step, register_method
from .channels import margins
from .teachers import load_or_train_teacher

SPECIFIC_LOSSES = ("hinge", "kl", "mse")
REWEIGHTS = ("paper", "released", "none", "ones")


def paper_weights(ate: dict[str, float], teacher_margin: dict[str, float], rho_floor: float = 1e-6):
    """rho^m = gamma^m / mean teacher margin, clamped at ``rho_floor``; lambda_m = 1 - rho^m / sum rho.

    Returns ``(rho, lam)``; rho is reported before clamping, lambda is computed after.
    """
    rho = {m: ate[m] / teacher_margin[m] if teacher_margin[m] > 0 else 0.0 for m in ate}
    clamped = {m: max(r, rho_floor) for m, r in rho.items()}
    total = sum(clamped.values())
    lam = {m: 1.0 - clamped[m] / total for m in ate}
    return rho, lam


def uniform_weights(names, form: str = "none") -> dict[str, float]:
    """Weights without re-weighting: (M - 1)/M each (``"none"``, sums like eq. 18) or 1 each (``"ones"``)."""
    value = (len(names) - 1) / len(names) if form == "none" else 1.0
    return {m: value for m in names}


def released_weights(ite: dict[str, torch.Tensor], channel_margin: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-triple weights of the released code, generalised to M modalities (see module docstring)."""
    coeff = {m: torch.clamp(ite[m] / channel_margin[m], 1e-8, 10.0) for m in ite}
    total = sum(coeff.values())
    scale = len(ite) / (len(ite) - 1)
    return {m: scale * (1.0 - coeff[m] / total) for m in ite}


def _joined(batch: Batch, generic: Batch | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(users, pos, neg) of the batch followed by the generic triples (if any)."""
    if generic is None:
        return batch.users, batch.pos, batch.neg
    return tuple(torch.cat([a, b]) for a, b in zip((batch.users, batch.pos, batch.neg),
                                                   (generic.users, generic.pos, generic.neg)))


def _split(values: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch's first ``n`` values and the rest (None when there is no rest)."""
    return (values, None) if len(values) == n else (values[:n], values[n:])


def _channel_margins(model, channel_inputs, batch: Batch, generic: Batch | None):
    """A channel's margins on the batch and on the generic triples (None without them).

    A backbone that computes only a step's rows (VBPR, DeepStyle) scores the two sets in
    two calls, so the batch's rows are the ones the step's full pass already gathered and
    projected (``Backbone.memoised``); any other backbone runs one forward for both.
    """
    if generic is not None and model.computes_batch_rows:
        return (margins(model, channel_inputs, batch.users, batch.pos, batch.neg),
                margins(model, channel_inputs, generic.users, generic.pos, generic.neg))
    return _split(margins(model, channel_inputs, *_joined(batch, generic)), len(batch.users))


@register_method("ckd")
@dataclass
class CKD(BalanceMethod):
    """Counterfactual Knowledge Distillation.

    Parameters
    ----------
    lambda_kd : float
        Weight of the distillation term (paper grid {1e-3, 1e-2, 1e-1, 5e-1}).
    lambda_g : float
        Weight of generic against specific distillation (paper grid {0.1, 0.5, 1, 5}).
    tau : float
        Temperature of the generic loss (paper: 0.1).
    specific : {"hinge", "kl", "mse"}
        Specific distillation loss (paper: hinge; the others are Table 3's variants).
    generic : bool
        Use the generic loss (False: Table 3's "w/o generic").
    reweight : {"paper", "released", "none", "ones"}
        Counterfactual weights as in the paper, as in the released code, uniform
        (M - 1)/M (Table 3's "w/o re-weight"), or all 1 (sums to M, not M - 1).
    rho_floor : float
        Clamp for a zero or negative rho before normalising.
    generic_batch_size : int or None
        Generic (u, j, k) triples per step; None: the training batch size.
    trace_every : int
        Record rho and lambda every this many steps in ``result.trace``.
    released_generic_scale : float
        Generic-loss factor of the released code (used only with ``reweight="released"``).
    teacher : dict
        TrainConfig overrides for teacher training (e.g. ``{"max_epochs": 50}``).
    """

    lambda_kd: float = 0.1
    lambda_g: float = 1.0
    tau: float = 0.1
    specific: str = "hinge"
    generic: bool = True
    reweight: str = "paper"
    rho_floor: float = 1e-6
    generic_batch_size: int | None = None
    trace_every: int = 10
    released_generic_scale: float = 5.0
    teacher: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.specific not in SPECIFIC_LOSSES:
            raise ValueError(f"specific must be one of {SPECIFIC_LOSSES}, got {self.specific!r}")
        if self.reweight not in REWEIGHTS:
            raise ValueError(f"reweight must be one of {REWEIGHTS}, got {self.reweight!r}")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}")

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, ctx: TrainContext, model) -> None:
        super().setup(ctx, model)
        modalities = ctx.dataset.modalities
        if len(modalities) < 2:
            raise ValueError(f"CKD needs at least two modalities; dataset {ctx.dataset.name!r} has {modalities}")
        if ctx.config.ablate:
            raise ValueError("CKD trains the full multimodal student: TrainConfig.ablate must be empty")
        if ctx.train_run is None:
            raise ValueError("CKD trains its teachers through TrainContext.train_run, which is missing "
                             "(pass ckdlab.train.training_runner(cache_dir))")
        self.teachers = {m: load_or_train_teacher(ctx.config, ctx.dataset, m, ctx.cache_dir, ctx.device, self.teacher,
                                                  train_run=ctx.train_run)
                         for m in modalities}
        self._rng = np.random.default_rng(ctx.config.seed + 7)
        self._generic_n = self.generic_batch_size or ctx.config.batch_size
        self._step, self._epochs_done = 0, 0
        self._epoch_sums: dict[str, dict[str, float]] = {}
        self._epoch_steps = 0
        self.trace: list[dict] = []

    # -- one step -----------------------------------------------------------------------------
    def _specific(self, dt: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
        if self.specific == "hinge":
            return hinge_distillation(dt, ds)
        if self.specific == "kl":
            return kl_distillation(dt, ds, self.tau)
        return mse_distillation(dt, ds)

    def batch_loss(self, model, inputs, batch: Batch):
        loss, _, _, margin = backbone_step(model, inputs, batch, self.ctx.config.reg_weight)

        generic = None
        if self.generic:  # uniform random triples (u, j, k) for the generic loss
            data = self.ctx.dataset
            generic = Batch(*(torch.as_tensor(a, dtype=torch.long, device=batch.users.device)
                              for a in uniform_triples(data.n_users, data.n_items, self._generic_n, self._rng)))

        names = inputs.names
        per_modality, ite, channel_margin, teacher_mean = {}, {}, {}, {}
        generic_terms = {}
        for m in names:
            ds, ds_generic = _channel_margins(model, inputs.only(m), batch, generic)
            with torch.no_grad():
                dt, dt_generic = _split(self.teachers[m].margin(*_joined(batch, generic)), len(batch.users))
            per_modality[m] = ds, dt
            if self.generic:
                generic_terms[m] = tempered_bce_distillation(dt_generic, ds_generic, self.tau)
            channel_margin[m] = ds.detach()
            teacher_mean[m] = float(dt.mean())
        with torch.no_grad():
            for m in names:
                # individual treatment effect of m: the full margin minus the margin with m ablated
                ablated = inputs.ablate(m)
                other = next((o for o in names if inputs.only(o).ablated == ablated.ablated), None)
                if other is not None:  # two modalities: "all but m" is the other channel, already scored
                    without_m = channel_margin[other]
                else:
                    without_m = margins(model, ablated, batch.users, batch.pos, batch.neg)
                ite[m] = margin.detach() - without_m

        ate = {m: float(ite[m].mean()) for m in names}
        rho, lam = paper_weights(ate, teacher_mean, self.rho_floor)
        if self.reweight == "released":
            weights = released_weights(ite, channel_margin)
            kd = 0.0
            for m in names:
                ds, dt = per_modality[m]
                per_triple = torch.clamp(dt - ds, min=0)  # the released code's hinge, per triple
                if self.generic:
                    per_triple = per_triple + self.released_generic_scale * generic_terms[m]
                kd = kd + (weights[m] * per_triple).mean()
            lam = {m: float(weights[m].mean()) for m in names}
        else:
            if self.reweight in ("none", "ones"):
                lam = uniform_weights(names, self.reweight)
            kd = 0.0
            for m in names:
                ds, dt = per_modality[m]
                l_m = self._specific(dt, ds)
                if self.generic:
                    l_m = l_m + self.lambda_g * generic_terms[m]
                kd = kd + lam[m] * l_m
        total = loss + self.lambda_kd * kd
        self._record(rho, lam, ate, teacher_mean)
        return total, {"kd_loss": float(kd.detach()) if torch.is_tensor(kd) else float(kd)}

    # -- bookkeeping --------------------------------------------------------------------------
    def _record(self, rho, lam, ate, teacher_mean) -> None:
        self._step += 1
        self._epoch_steps += 1
        for key, values in (("rho", rho), ("lambda", lam)):
            sums = self._epoch_sums.setdefault(key, {})
            for m, v in values.items():
                sums[m] = sums.get(m, 0.0) + v
        if self._step % self.trace_every == 0:
            self.trace.append({"step": self._step, "epoch": self._epochs_done + 1, "rho": rho, "lambda": lam,
                               "ate": ate, "teacher_margin": teacher_mean})

    def epoch_end(self, epoch: int, model) -> dict:
        self._epochs_done = epoch
        n = max(self._epoch_steps, 1)
        out = {key: {m: v / n for m, v in sums.items()} for key, sums in self._epoch_sums.items()}
        self._epoch_sums, self._epoch_steps = {}, 0
        return out

    def extras(self) -> dict:
        return {"trace": self.trace, "teachers": {m: t.summary() for m, t in self.teachers.items()}}

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The generic-triple RNG, step counters, the running epoch sums and the trace."""
        return {"rng": self._rng.bit_generator.state, "step": self._step, "epochs_done": self._epochs_done,
                "epoch_sums": self._epoch_sums, "epoch_steps": self._epoch_steps, "trace": self.trace}

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)
        self._rng.bit_generator.state = state["rng"]
        self._step, self._epochs_done = state["step"], state["epochs_done"]
        self._epoch_sums, self._epoch_steps = state["epoch_sums"], state["epoch_steps"]
        self.trace = state["trace"]
