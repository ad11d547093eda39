"""Gradient Blending (Wang, Tran & Feiszli, CVPR 2020), adapted to BPR recommendation.

GB trains the full (multimodal) model together with one uni-modal head per
modality and blends their losses with weights set from each head's
overfitting-to-generalisation ratio. Here a "head" k is either the full model
(``k = "full"``) or the channel of modality ``m``: the same backbone fed
``inputs.only(m)`` (every other modality mean-ablated), so any backbone works
without extra parameters. The training loss of one batch is::

    L = sum_k w_k * BPR_k  +  reg_weight * L2  +  auxiliary loss of the backbone (once)

Weights (online GB, the paper's Algorithm 1 with loss as the measure)
-------------------------------------------------------------------
A held-out slice of the *training* interactions (``holdout_fraction``, 10% by
default, seeded by ``config.seed``) is never trained on: ``training_data``
returns the dataset without it, and the trainer builds from that both the
backbone (so the held-out pairs are no edges of GRCN's, EgoGCN's, MMGCN's or
MGCN's propagation graphs) and the BPR sampler (they are never positives).
As with the real validation split, a held-out item may still be drawn as a
negative, being unobserved from the model's side. Evaluation keeps the
original dataset: held-out pairs are training interactions there, masked
from the rankings. The validation and test splits are never read. At set-up
(epoch 0) and at the end of every super-epoch (``super_epoch`` epochs) each
head's mean BPR loss is measured, without gradient and in eval mode, on fixed
seeded triples: ``L^T_k`` on up to ``eval_triples`` training triples and
``L^V_k`` on up to ``eval_triples`` held-out triples (negatives drawn uniformly
from items outside the user's full training set). Between the previous
measurement and this one::

    O_k   = L^V_k - L^T_k                       (overfitting)
    dG_k  = L^V_k(prev) - L^V_k(now)            (generalisation gain)
    dO_k  = O_k(now) - O_k(prev)                (change in overfitting)
    w_k   = max(dG_k, 0) / max(dO_k^2, eps),    then normalised to sum to 1

and the new weights are used for the next super-epoch. Initial weights are
uniform. When no head gained (every clipped dG_k is 0) the previous weights
are kept: the estimate carries no information on which head to favour.
"""
from __future__ import annotations

import copy

import numpy as np
import scipy.sparse as sp
import torch.nn.functional as F

from ..data.samplers import BPRSampler
from .base import BalanceMethod, Batch, TrainContext, backbone_step, register_method, training_view
from .channels import FULL, bpr_on_triples, check_modalities, margins, to_device_triples


def blend_terms(prev_train: dict, prev_valid: dict, train: dict, valid: dict) -> dict[str, dict[str, float]]:
    """Overfitting ``O``, generalisation gain ``dG`` and overfitting change ``dO`` per head."""
    out = {"O": {}, "dG": {}, "dO": {}}
    for k in valid:
        o_prev = prev_valid[k] - prev_train[k]
        o_now = valid[k] - train[k]
        out["O"][k] = float(o_now)
        out["dG"][k] = float(prev_valid[k] - valid[k])
        out["dO"][k] = float(o_now - o_prev)
    return out


def blend_weights(prev_train: dict, prev_valid: dict, train: dict, valid: dict, eps: float = 1e-6,
                  previous: dict | None = None) -> dict[str, float]:
    """Gradient-Blending weights from two loss measurements per head.

    ``w_k ∝ max(dG_k, 0) / max(dO_k^2, eps)`` with ``dG_k = L^V_prev - L^V_now``
    and ``dO_k = (L^V_now - L^T_now) - (L^V_prev - L^T_prev)``, normalised to
    sum to 1. If every clipped ``dG_k`` is 0 the ``previous`` weights are
    returned (uniform when ``previous`` is None).

    Parameters
    ----------
    prev_train, prev_valid, train, valid : dict of str to float
        Training / held-out losses per head at the previous and the current measurement.
    eps : float
        Floor of ``dO^2`` (a head whose overfitting did not change is not given infinite weight).
    previous : dict, optional
        Weights to keep when no head generalised better.
    """
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    keys = list(valid)
    terms = blend_terms(prev_train, prev_valid, train, valid)
    raw = {k: max(terms["dG"][k], 0.0) / max(terms["dO"][k] ** 2, eps) for k in keys}
    z = sum(raw.values())
    if not np.isfinite(z):
        raise FloatingPointError(f"non-finite Gradient-Blending scores {raw} (losses {train}, {valid})")
    if z <= 0:
        if previous is not None:
            return {k: float(previous[k]) for k in keys}
        return {k: 1.0 / len(keys) for k in keys}
    return {k: v / z for k, v in raw.items()}


def holdout_split(pairs: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, hold)`` of a random held-out slice of ``(user, item)`` pairs.

    ``hold`` has ``round(fraction * len(pairs))`` interactions (fewer only if
    impossible), drawn uniformly with the constraint that every user keeps at
    least one interaction to train on. Both index arrays are sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_fraction must lie in (0, 1), got {fraction}")
    n = len(pairs)
    rng = np.random.default_rng([int(seed), 0x6762])  # "gb"
    order = rng.permutation(n)
    users = pairs[order, 0]
    # Rank of each shuffled interaction within its user: rank 0 is the one the user keeps.
    by_user = np.argsort(users, kind="stable")
    sorted_users = users[by_user]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(sorted_users)]))
    rank = np.empty(n, dtype=np.int64)
    rank[by_user] = np.arange(n) - group_start
    candidates = order[rank > 0]  # still in shuffled order
    n_hold = min(int(round(fraction * n)), len(candidates))
    hold = np.sort(candidates[:n_hold])
    keep = np.setdiff1d(np.arange(n), hold, assume_unique=True)
    return keep, hold


@register_method("gb")
class GradientBlending(BalanceMethod):
    """Online Gradient Blending over the full model and every modality channel.

    Parameters
    ----------
    super_epoch : int
        Epochs between weight re-estimations (default 5).
    holdout_fraction : float
        Share of the training interactions held out to measure generalisation (default 0.1).
    eval_triples : int
        At most this many fixed triples for each of ``L^T`` and ``L^V`` (default 20000).
    eps : float
        Floor of ``dO^2`` in the weight formula (default 1e-6).

    History and extras
    ------------------
    Every history entry holds ``gb_weights`` (the weights used in that epoch);
    at a super-epoch end also ``gb_next_weights``. Step logs add the mean
    ``gb_bpr_<k>`` per head. ``extras()["gb"]`` has the hold-out sizes and the
    trace of every measurement (losses, ``O``, ``dG``, ``dO`` and new weights).
    """

    def __init__(self, super_epoch: int = 5, holdout_fraction: float = 0.1, eval_triples: int = 20000,
                 eps: float = 1e-6):
        if int(super_epoch) < 1:
            raise ValueError(f"super_epoch must be >= 1, got {super_epoch}")
        if not 0.0 < float(holdout_fraction) < 1.0:
            raise ValueError(f"holdout_fraction must lie in (0, 1), got {holdout_fraction}")
        if int(eval_triples) < 1:
            raise ValueError(f"eval_triples must be >= 1, got {eval_triples}")
        if float(eps) <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.super_epoch = int(super_epoch)
        self.holdout_fraction = float(holdout_fraction)
        self.eval_triples = int(eval_triples)
        self.eps = float(eps)
        self._train_matrix = None
        self._split = None  # (dataset, seed, keep_pairs, hold_pairs) of the last split computed

    # -- the held-out slice -----------------------------------------------------
    def _holdout(self, dataset, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keep_pairs, hold_pairs)`` of ``dataset.train``, computed once per dataset and seed."""
        if self._split is None or self._split[0] is not dataset or self._split[1] != seed:
            pairs = np.asarray(dataset.train, dtype=np.int64)
            keep, hold = holdout_split(pairs, self.holdout_fraction, seed)
            if len(hold) == 0:
                raise ValueError(f"gb: no training interaction can be held out ({len(pairs)} interactions, "
                                 f"every user has one); use a larger dataset")
            self._split = (dataset, seed, pairs[keep], pairs[hold])
        return self._split[2], self._split[3]

    def training_data(self, dataset, config):
        """``dataset`` without the held-out slice (graphs and sampler); see the module docstring."""
        keep, hold = self._holdout(dataset, int(config.seed))
        return training_view(dataset, keep, f"gb: {len(hold)} training interactions held out")

    # -- set-up -----------------------------------------------------------------
    def setup(self, ctx: TrainContext, model) -> None:
        """Measurement triples and the epoch-0 losses.

        ``model`` must have been built from :meth:`training_data`'s view (the trainer
        does so), else the held-out pairs are edges of a graph backbone's propagation.
        """
        super().setup(ctx, model)
        self.modalities = check_modalities(model, ctx.inputs, "Gradient Blending (gb)")
        self.keys = (FULL, *self.modalities)
        ds, seed = ctx.dataset, int(ctx.config.seed)
        self.keep_pairs, self.hold_pairs = self._holdout(ds, seed)
        self._train_matrix = sp.csr_matrix(
            (np.ones(len(self.keep_pairs), dtype=np.float32), (self.keep_pairs[:, 0], self.keep_pairs[:, 1])),
            shape=(ds.n_users, ds.n_items))
        # Fixed measurement triples; negatives avoid the user's whole training set.
        rng = np.random.default_rng([seed, 0x6762, 1])
        neg_sampler = BPRSampler(ds.train_matrix, seed=rng)
        self._triples = {}
        for name, src in (("train", self.keep_pairs), ("holdout", self.hold_pairs)):
            idx = np.sort(rng.choice(len(src), size=min(self.eval_triples, len(src)), replace=False))
            users, pos = src[idx, 0], src[idx, 1]
            self._triples[name] = to_device_triples(users, pos, neg_sampler.sample_negatives(users), ctx.device)
        self.weights = {k: 1.0 / len(self.keys) for k in self.keys}
        self._last = self._measure(model)
        self.trace = [{"epoch": 0, **self._last, "weights": dict(self.weights)}]

    def training_matrix(self, dataset) -> sp.csr_matrix:
        """Training interactions minus the held-out slice (call after ``setup``); the same as
        ``training_data(dataset, config).train_matrix``."""
        if self._train_matrix is None:
            raise RuntimeError("GradientBlending.training_matrix called before setup()")
        if dataset is not self.ctx.dataset:
            raise ValueError("GradientBlending.training_matrix: not the dataset given at setup()")
        return self._train_matrix

    def _measure(self, model) -> dict[str, dict[str, float]]:
        """``L^T_k`` and ``L^V_k`` for every head, on the fixed triples."""
        out = {"train_loss": {}, "valid_loss": {}}
        inputs = self.ctx.inputs
        for k in self.keys:
            head = inputs if k == FULL else inputs.only(k)
            out["train_loss"][k] = bpr_on_triples(model, head, self._triples["train"])
            out["valid_loss"][k] = bpr_on_triples(model, head, self._triples["holdout"])
        return out

    # -- training ---------------------------------------------------------------
    def batch_loss(self, model, inputs, batch: Batch):
        w = self.weights
        loss, _, _, margin = backbone_step(model, inputs, batch, self.ctx.config.reg_weight)
        bpr_full = -F.logsigmoid(margin).mean()
        # backbone_step's loss already holds BPR_full once; re-weight it to w_full.
        total = loss + (w[FULL] - 1.0) * bpr_full
        logs = {f"gb_bpr_{FULL}": float(bpr_full.detach())}
        for m in self.modalities:
            if w[m] == 0.0:
                continue  # weight 0 this super-epoch: skip the channel's forward pass
            bpr_m = -F.logsigmoid(margins(model, inputs.only(m), batch.users, batch.pos, batch.neg)).mean()
            total = total + w[m] * bpr_m
            logs[f"gb_bpr_{m}"] = float(bpr_m.detach())
        return total, logs

    def epoch_end(self, epoch: int, model) -> dict:
        out = {"gb_weights": dict(self.weights)}
        if epoch % self.super_epoch == 0:
            now = self._measure(model)
            prev = self._last
            new = blend_weights(prev["train_loss"], prev["valid_loss"], now["train_loss"], now["valid_loss"],
                                self.eps, previous=self.weights)
            terms = blend_terms(prev["train_loss"], prev["valid_loss"], now["train_loss"], now["valid_loss"])
            self.trace.append({"epoch": epoch, **now, **terms, "weights": dict(new),
                               "kept_previous": all(v <= 0 for v in terms["dG"].values())})
            self._last, self.weights = now, new
            out["gb_next_weights"] = dict(new)
        return out

    def extras(self) -> dict:
        return {"gb": {"heads": list(self.keys), "super_epoch": self.super_epoch,
                       "holdout_fraction": self.holdout_fraction, "eps": self.eps,
                       "train_interactions": int(len(self.keep_pairs)),
                       "holdout_interactions": int(len(self.hold_pairs)),
                       "eval_triples": {k: int(len(t[0])) for k, t in self._triples.items()},
                       "weights": dict(self.weights), "trace": self.trace}}

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict:
        """Current weights, the last measurement (the next update's reference) and the trace."""
        return {"weights": self.weights, "last": self._last, "trace": self.trace}

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)
        self.weights, self._last, self.trace = state["weights"], state["last"], state["trace"]
