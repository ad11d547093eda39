"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement
(Peng, Wei, Deng, Wang & Hu, CVPR 2022), adapted to BPR recommendation.

The loss is the backbone's own (BPR + L2 + auxiliary, ``backbone_step``); OGM
only rescales gradients. Per step, with the channel of modality ``m`` being
the backbone fed ``inputs.only(m)`` (every other modality mean-ablated):

    s_m   = sum over the batch of sigmoid(s^m_ui - s^m_uj)     (confidence; no grad)
    rho_m = s_m / mean_{m' != m} s_{m'}                        (discrepancy ratio)
    k_m   = 1 - tanh(alpha * rho_m)   if rho_m > 1, else 1     (paper eq. 10, official code)

``sigmoid`` of the channel's BPR margin plays the part of the softmax
probability of the true class in the paper. With two modalities ``rho`` is
the paper's ``s_a / s_v``; with more, each modality is compared with the mean
of the others, and every modality with ``rho_m > 1`` is slowed down.

``coefficient="shifted"`` uses ``k_m = 1 - tanh(alpha * relu(rho_m - 1))``
instead, which is continuous at ``rho = 1`` (the paper's form jumps from 1 to
``1 - tanh(alpha)`` there). The default is the paper's form, which is also the
one in the authors' code (``1 - tanh(alpha * relu(ratio))`` under ``ratio > 1``).

In ``after_backward``, during the modulation epochs ``[modulation_start,
modulation_end]``, the gradient ``g`` of every parameter of
``model.modality_parameters(m)`` becomes::

    g <- k_m * g + n * [g != 0],   n ~ N(0, std(g[g != 0])^2)     (GE)

The noise (generalisation enhancement) falls only on the entries that got a
non-zero gradient in this step, and its std is taken over those entries (of
the un-modulated gradient). An entry without gradient keeps a zero gradient,
so no optimizer moves it because of GE: under Adam, a tiny noise on a row
that got no gradient would otherwise become a step of about the learning
rate (Adam normalises it), moving e.g. the preference rows of users absent
from the batch (Adam's momentum still carries earlier real gradients, as
without GE). In the paper's dense audio/visual encoders practically every
weight gets a gradient each step, so there the two forms nearly coincide; in
recommendation a user-preference table gets a gradient only in the rows its
step reached.
``ge_touched_only=False`` restores the whole-table form (noise on every
entry, std over the whole gradient); it is kept only to reproduce that
handicapped variant and is not the default.

As in the authors' code, the noise goes to every modulated modality's
parameters, including those whose ``k_m = 1`` (``ge_scope="all"``);
``ge_scope="dominant"`` adds it only where ``k_m < 1``. ``ge=False`` is plain
OGM. Parameters outside every modality set are never touched. The noise comes
from a ``torch.Generator`` seeded from ``config.seed``.

What is modulated
-----------------
OGM-GE (Peng et al., CVPR 2022) modulates the gradients of each modality's
*encoder* parameters (the audio / visual backbone networks) and adds the
noise to them; the fusion layer and classifier are left alone. A
recommendation backbone has no separate encoder, so OGM here modulates
``model.modality_parameters(m)``, which is per backbone:

=========  =========================================================  ============================
backbone   ``modality_parameters(m)``: modulated, and noised by GE    vs. the paper's encoder of m
=========  =========================================================  ============================
VBPR       user preference ``p_u^m`` (one row per user), projection   encoder + user-side
           ``W_m, b_m``, content bias ``beta'_m``                     preference table
DeepStyle  projection ``E_m``                                         encoder
MMGCN      branch of ``m``: preference ``p_u^m``, projection, conv /  encoder (the branch is
           linear / gate layers                                       a GCN encoder)
GRCN       preference ``p_u^m``, projection ``W_m, b_m``, node        encoder + edge-scoring
           confidence ``confidence[m]`` (one entry per node)          weights
EgoGCN     preference ``p^m``, projection ``W_m, b_m``, the gates of  approximate split: no
           branch ``m`` in every layer                                separate encoder exists
MGCN       projection ``T_m``, purifier gate ``W_m``, preference      approximate split: no
           gate ``G_m``                                               separate encoder exists
=========  =========================================================  ============================

ID embeddings and every shared layer belong to no modality and are never
modulated or noised. The tables with one row per user (or node) are the
reason for the touched-entries rule above.
"""
from __future__ import annotations

import copy
import math

import torch

from .base import BalanceMethod, Batch, TrainContext, backbone_step, register_method
from .channels import channel_margins, check_modalities

_FORMS = ("paper", "shifted")
_SCOPES = ("all", "dominant")


def ogm_ratios(confidences: dict[str, float]) -> dict[str, float]:
    """``rho_m = s_m / mean_{m' != m} s_{m'}`` for every modality (at least two)."""
    if len(confidences) < 2:
        raise ValueError(f"OGM needs at least two modalities, got {list(confidences)}")
    total, n = sum(confidences.values()), len(confidences)
    out = {}
    for m, s in confidences.items():
        others = (total - s) / (n - 1)
        out[m] = float(s) / others if others > 0 else (math.inf if s > 0 else 1.0)
    return out


def ogm_coefficients(confidences: dict[str, float], alpha: float, form: str = "paper") -> dict[str, float]:
    """Modulation coefficients ``k_m`` from per-modality confidences.

    ``form="paper"``: ``k_m = 1 - tanh(alpha * rho_m)`` if ``rho_m > 1`` else 1
    (OGM-GE eq. 10). ``form="shifted"``: ``k_m = 1 - tanh(alpha * relu(rho_m - 1))``.
    ``rho_m`` is :func:`ogm_ratios`.
    """
    if form not in _FORMS:
        raise ValueError(f"unknown OGM coefficient form {form!r}; expected one of {_FORMS}")
    out = {}
    for m, rho in ogm_ratios(confidences).items():
        if rho > 1.0:
            out[m] = 1.0 - math.tanh(alpha * (rho if form == "paper" else rho - 1.0))
        else:
            out[m] = 1.0
    return out


@register_method("ogm")
class OGMGE(BalanceMethod):
    """On-the-fly gradient modulation (+ generalisation enhancement) of modality parameters.

    Parameters
    ----------
    alpha : float
        Modulation strength (default 0.5).
    modulation_start, modulation_end : int or None
        First and last epoch (1-based, inclusive) with modulation; defaults: every epoch.
    ge : bool
        Add the Gaussian noise (OGM-GE, default) or not (plain OGM).
    ge_scope : {"all", "dominant"}
        Noise on every modality's parameters while modulating (authors' code, default)
        or only on modalities with ``k_m < 1``.
    ge_touched_only : bool
        Noise only on the gradient entries that are non-zero, std over those (default True).
        False: noise on every entry of the table, std over all of it, which under Adam moves
        rows that got no gradient (a handicapped variant, kept only to reproduce it).
    coefficient : {"paper", "shifted"}
        Form of ``k_m``; see the module docstring.

    History and extras
    ------------------
    Every epoch's history entry holds ``ogm_coeff`` (mean applied ``k_m``; 1 outside
    the modulation epochs), ``ogm_ratio`` (mean ``rho_m``), ``ogm_confidence``
    (mean ``sigmoid`` of the channel margin per triple) and ``ogm_active``.
    ``extras()["ogm"]["trace"]`` keeps them for every epoch.
    """

    def __init__(self, alpha: float = 0.5, modulation_start: int = 1, modulation_end: int | None = None,
                 ge: bool = True, ge_scope: str = "all", ge_touched_only: bool = True,
                 coefficient: str = "paper"):
        if float(alpha) < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if coefficient not in _FORMS:
            raise ValueError(f"coefficient must be one of {_FORMS}, got {coefficient!r}")
        if ge_scope not in _SCOPES:
            raise ValueError(f"ge_scope must be one of {_SCOPES}, got {ge_scope!r}")
        if modulation_end is not None and int(modulation_end) < int(modulation_start):
            raise ValueError(f"modulation_end ({modulation_end}) < modulation_start ({modulation_start})")
        self.alpha = float(alpha)
        self.modulation_start = int(modulation_start)
        self.modulation_end = None if modulation_end is None else int(modulation_end)
        self.ge, self.ge_scope, self.ge_touched_only = bool(ge), ge_scope, bool(ge_touched_only)
        self.coefficient = coefficient
        self._epoch = 1
        self._pending: dict[str, float] | None = None
        self._generators: dict[torch.device, torch.Generator] = {}
        self.trace: list[dict] = []

    def setup(self, ctx: TrainContext, model) -> None:
        super().setup(ctx, model)
        self.modalities = check_modalities(model, ctx.inputs, "OGM-GE (ogm)", disjoint=True)
        self._params = {m: list(model.modality_parameters(m)) for m in self.modalities}
        self._seed = int(ctx.config.seed) * 1_000_003 + 0x6F676D  # "ogm"
        self._reset_epoch_sums()

    def _reset_epoch_sums(self) -> None:
        self._steps = 0
        self._sums = {key: {m: 0.0 for m in self.modalities} for key in ("coeff", "ratio", "confidence")}

    def active(self, epoch: int | None = None) -> bool:
        e = self._epoch if epoch is None else epoch
        return e >= self.modulation_start and (self.modulation_end is None or e <= self.modulation_end)

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[device]

    def batch_loss(self, model, inputs, batch: Batch):
        with torch.no_grad():
            cm = channel_margins(model, inputs, self.modalities, batch.users, batch.pos, batch.neg)
            conf_t = torch.stack([torch.sigmoid(cm[m]).sum() for m in self.modalities]).double().cpu()
        conf = {m: float(c) for m, c in zip(self.modalities, conf_t)}
        ratios = ogm_ratios(conf)
        coeffs = ogm_coefficients(conf, self.alpha, self.coefficient)
        active = self.active()
        self._pending = coeffs if active else None
        n = max(len(batch.users), 1)
        self._steps += 1
        for m in self.modalities:
            self._sums["coeff"][m] += coeffs[m] if active else 1.0
            self._sums["ratio"][m] += ratios[m]
            self._sums["confidence"][m] += conf[m] / n
        loss, *_ = backbone_step(model, inputs, batch, self.ctx.config.reg_weight)
        return loss, {}

    @torch.no_grad()
    def after_backward(self, model) -> None:
        coeffs, self._pending = self._pending, None
        if coeffs is None:
            return
        for m in self.modalities:
            k = coeffs[m]
            noisy = self.ge and (self.ge_scope == "all" or k < 1.0)
            for p in self._params[m]:
                g = p.grad
                if g is None:
                    continue
                if noisy and g.numel() > 1:
                    noise = self._noise(g)  # from the un-modulated gradient
                    g.mul_(k).add_(noise)
                elif k != 1.0:
                    g.mul_(k)

    def _noise(self, g: torch.Tensor) -> torch.Tensor:
        """GE noise for gradient ``g``: zero wherever ``g`` is zero (unless ``ge_touched_only=False``)."""
        n = torch.randn(g.shape, generator=self._generator(g.device), device=g.device, dtype=g.dtype)
        if not self.ge_touched_only:
            return n * g.std()
        mask = g != 0
        touched = g[mask]
        if touched.numel() < 2:  # no spread to take: no noise
            return torch.zeros_like(g)
        return n * touched.std() * mask

    def epoch_end(self, epoch: int, model) -> dict:
        steps = max(self._steps, 1)
        means = {key: {m: v / steps for m, v in sums.items()} for key, sums in self._sums.items()}
        entry = {"ogm_coeff": means["coeff"], "ogm_ratio": means["ratio"],
                 "ogm_confidence": means["confidence"], "ogm_active": self.active(epoch)}
        self.trace.append({"epoch": epoch, **entry})
        self._epoch = epoch + 1
        self._reset_epoch_sums()
        return entry

    def extras(self) -> dict:
        return {"ogm": {"alpha": self.alpha, "coefficient": self.coefficient, "ge": self.ge,
                        "ge_scope": self.ge_scope, "ge_touched_only": self.ge_touched_only,
                        "modulation_start": self.modulation_start, "modulation_end": self.modulation_end,
                        "modalities": list(self.modalities), "trace": self.trace}}

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Epoch counter, pending coefficients, GE noise generators, running sums and trace."""
        return {"epoch": self._epoch, "pending": self._pending, "steps": self._steps, "sums": self._sums,
                "trace": self.trace,
                "generators": {str(device): g.get_state() for device, g in self._generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        state = copy.deepcopy(state)
        self._epoch, self._pending = state["epoch"], state["pending"]
        self._steps, self._sums, self.trace = state["steps"], state["sums"], state["trace"]
        for device, rng_state in state["generators"].items():
            self._generator(torch.device(device)).set_state(rng_state)
