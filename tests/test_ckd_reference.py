"""One whole CKD step against an independent reference written from the paper (eq. 10-19).

The reference below never calls ``ckdlab.balance.ckd``'s helpers nor the
distillation losses of ``ckdlab.losses``: it uses only the backbone's own
forward / score / regularisation / auxiliary-loss functions, ``ModalityInputs``
(``only(m)`` for the channel of m, ``ablate(m)`` for "without m") and the
teachers' stored representations, with the library's documented conventions:

- batch means instead of the paper's sums (eq. 11, 12, 16, 17);
- rho^m = mean ITE^m / mean teacher margin^m, clamped at ``rho_floor``;
  lambda_m = 1 - rho^m / sum_k rho^k; weights are constants in the backward pass;
- ``reweight="released"``: per-triple c^m = clamp(ITE^m / ds^m, 1e-8, 10),
  w^m = M/(M-1) (1 - c^m / sum_k c^k), generic loss scaled and added per triple.

Everything runs in float64, so loss and gradients must agree to rtol 1e-9.
Teachers are built by hand (a second, differently seeded instance of the same
backbone on the uni-modal inputs) and injected into ``CKD.setup``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ckdlab.balance.ckd as ckd_module
from ckdlab.backbones import build_backbone
from ckdlab.balance import Batch, TrainContext, build_method
from ckdlab.balance.teachers import Teacher
from ckdlab.config import TrainConfig
from ckdlab.modality import ModalityInputs
from ckdlab.train import training_runner

from conftest import make_tiny_dataset

TWO = {"image": 12, "text": 8}
THREE = {"image": 12, "text": 8, "audio": 6}
BATCH = 32
GENERIC = 24  # differs from BATCH, so generic triples cannot be confused with the batch
REG = 1e-2
PARAMS = dict(lambda_kd=0.3, lambda_g=0.7, tau=0.2, rho_floor=1e-6, released_generic_scale=3.0)
# float64 on both sides; only summation order differs (a few ulps), far below this
RTOL = 1e-9


# -- set-up ------------------------------------------------------------------------------------

def _margin(user_reps, item_reps, users, pos, neg):
    """Delta s_uij = s_ui - s_uj from two scores (the paper's form, not the library's u.(i - j))."""
    return (user_reps[users] * item_reps[pos]).sum(-1) - (user_reps[users] * item_reps[neg]).sum(-1)


class Setting:
    """A float64 student, hand-built teachers and a batch chosen for the regime under test."""

    def __init__(self, backbone: str, dims: dict, regime: str = "positive"):
        self.dataset = make_tiny_dataset(dims=dims)
        self.backbone = backbone
        torch.manual_seed(0)
        self.model = build_backbone(backbone, self.dataset).double()
        self.inputs = ModalityInputs({m: torch.as_tensor(f, dtype=torch.float64)
                                      for m, f in self.dataset.features.items()})
        names = self.inputs.names
        torch.manual_seed(1)
        teacher_model = build_backbone(backbone, self.dataset).double()

        # candidates: every training pair with four random negatives
        train = torch.as_tensor(self.dataset.train)
        gen = torch.Generator().manual_seed(0)
        users, pos = train[:, 0].repeat(4), train[:, 1].repeat(4)
        neg = torch.randint(0, self.dataset.n_items, (len(users),), generator=gen)
        with torch.no_grad():
            full = _margin(*self.model(self.inputs), users, pos, neg)
            ite = {m: full - _margin(*self.model(self.inputs.ablate(m)), users, pos, neg) for m in names}
            channel = {m: _margin(*self.model(self.inputs.only(m)), users, pos, neg) for m in names}
            teacher_reps = {m: teacher_model(self.inputs.only(m)) for m in names}
        if regime == "positive":  # every modality helps on every triple: no rho is clamped
            keep = torch.stack([ite[m] > 0 for m in names]).all(0)
        else:  # "clamped": the first modality hurts (negative ATE, rho clamped), the others help
            keep = (ite[names[0]] < 0) & torch.stack([ite[m] > 0 for m in names[1:]]).all(0)
        idx = keep.nonzero().squeeze(1)[:BATCH]
        assert len(idx) == BATCH
        self.batch = Batch(users[idx], pos[idx], neg[idx])

        # teachers: scaled so their margins are comparable to the channel's (the hinge is active on
        # some triples only) and signed so their batch-mean margin is positive (rho is defined)
        self.teachers = {}
        for m in names:
            u_t, i_t = teacher_reps[m]
            dt = _margin(u_t, i_t, users, pos, neg)
            scale = float(channel[m].std() / dt.std())
            if float(dt[idx].mean()) < 0:
                scale = -scale
            self.teachers[m] = Teacher(m, u_t.clone(), (i_t * scale).clone(), {}, {}, 0, cached=True)

    def config(self, **params) -> TrainConfig:
        return TrainConfig(backbone=self.backbone, method="ckd", batch_size=BATCH, reg_weight=REG, progress=False,
                           device="cpu", method_params=params)

    def method(self, monkeypatch, tmp_path, **params):
        """A CKD set up through its own ``setup``, with this setting's teachers injected."""
        monkeypatch.setattr(ckd_module, "load_or_train_teacher",
                            lambda config, dataset, modality, *args, **kwargs: self.teachers[modality])
        config = self.config(**params)
        method = build_method("ckd", **params)
        method.setup(TrainContext(self.dataset, config, torch.device("cpu"), tmp_path, self.inputs,
                                  train_run=training_runner(tmp_path)), self.model)
        return method


@pytest.fixture
def generic_triples(monkeypatch):
    """Records every (u, j, k) draw CKD makes (the library's own sampler, unchanged)."""
    calls = []
    real = ckd_module.uniform_triples

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(tuple(torch.as_tensor(np.array(a, copy=True), dtype=torch.long) for a in out))
        return out

    monkeypatch.setattr(ckd_module, "uniform_triples", recording)
    return calls


# -- the reference -----------------------------------------------------------------------------

def reference_step(model, inputs, teachers, batch, generic, *, reweight, lambda_kd, lambda_g, tau, rho_floor,
                   released_generic_scale):
    """Total loss of one step, from the paper's equations; returns ``(total, kd, rho, lam)``."""
    u, i, j = batch.users, batch.pos, batch.neg
    names = inputs.names
    n_mod = len(names)

    user_reps, item_reps = model(inputs)
    full = _margin(user_reps, item_reps, u, i, j)
    loss = -F.logsigmoid(full).mean()  # eq. 2 (batch mean)
    loss = loss + REG * model.regularization(user_reps, item_reps, u, i, j)
    loss = loss + model.auxiliary_loss(user_reps, item_reps, u, i, j)

    ds, dt, gd, ite = {}, {}, {}, {}
    for m in names:
        u_m, i_m = model(inputs.only(m))  # eq. 10: the student's channel of m
        teacher = teachers[m]
        ds[m] = _margin(u_m, i_m, u, i, j)
        dt[m] = _margin(teacher.user_reps, teacher.item_reps, u, i, j).detach()
        if generic is not None:  # eq. 12-13 on the uniform (u, j, k) triples
            gu, gj, gk = generic
            s = _margin(u_m, i_m, gu, gj, gk) / tau
            t_bar = torch.sigmoid(_margin(teacher.user_reps, teacher.item_reps, gu, gj, gk) / tau)
            # log sigma(x) and log(1 - sigma(x)) written as logsigmoid(x), logsigmoid(-x) (no log(0) in float64)
            gd[m] = -(t_bar * F.logsigmoid(s) + (1 - t_bar) * F.logsigmoid(-s)).mean()
        with torch.no_grad():  # eq. 15: ITE = Delta s - Delta s^{m bar}, m mean-ablated
            u_a, i_a = model(inputs.ablate(m))
            ite[m] = full.detach() - _margin(u_a, i_a, u, i, j)

    hinge = {m: torch.where(dt[m] > ds[m], dt[m] - ds[m], torch.zeros_like(ds[m])) for m in names}  # eq. 11
    rho = {m: float(ite[m].mean()) / float(dt[m].mean()) for m in names}  # eq. 16-17 (batch means)
    if reweight == "paper":
        clamped = {m: max(r, rho_floor) for m, r in rho.items()}
        lam = {m: 1.0 - clamped[m] / sum(clamped.values()) for m in names}  # eq. 18
        kd = 0.0
        for m in names:
            l_m = hinge[m].mean()
            if generic is not None:
                l_m = l_m + lambda_g * gd[m]  # eq. 14
            kd = kd + lam[m] * l_m
    else:  # the released code's per-triple weights
        coeff = {m: (ite[m] / ds[m].detach()).clamp(1e-8, 10.0) for m in names}
        total_c = sum(coeff.values())
        w = {m: n_mod / (n_mod - 1) * (1.0 - coeff[m] / total_c) for m in names}
        kd = 0.0
        for m in names:
            per_triple = hinge[m] + (released_generic_scale * gd[m] if generic is not None else 0.0)
            kd = kd + (w[m] * per_triple).mean()
        lam = {m: float(w[m].mean()) for m in names}
    return loss + lambda_kd * kd, kd, rho, lam  # eq. 19


def _grads(model):
    return {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def _assert_same_grads(lib, ref):
    assert lib.keys() == ref.keys()
    moved = 0
    for name in ref:
        scale = float(ref[name].abs().max())
        torch.testing.assert_close(lib[name], ref[name], rtol=RTOL, atol=RTOL * max(scale, 1e-30),
                                   msg=lambda text, name=name: f"gradient of {name}: {text}")
        moved += scale > 0
    assert moved > 0


CASES = ([(bb, TWO, rw, gen, "positive") for bb in ("VBPR", "MGCN") for rw in ("paper", "released")
          for gen in (True, False)]
         + [(bb, TWO, "paper", True, "clamped") for bb in ("VBPR", "MGCN")]
         + [("VBPR", THREE, rw, True, "positive") for rw in ("paper", "released")])


@pytest.mark.parametrize("backbone,dims,reweight,generic,regime", CASES,
                         ids=[f"{b}-{len(d)}mod-{r}-{'generic' if g else 'nogeneric'}-{reg}"
                              for b, d, r, g, reg in CASES])
def test_one_step_matches_paper_reference(backbone, dims, reweight, generic, regime, tmp_path, monkeypatch,
                                          generic_triples):
    setting = Setting(backbone, dims, regime)
    model, inputs, batch = setting.model, setting.inputs, setting.batch
    method = setting.method(monkeypatch, tmp_path, reweight=reweight, generic=generic, trace_every=1,
                            generic_batch_size=GENERIC, **PARAMS)

    model.zero_grad(set_to_none=True)
    with model.step_scope():  # as ckdlab.train.train_epoch runs a step
        lib_loss, logs = method.batch_loss(model, inputs, batch)
    assert lib_loss.dtype == torch.float64
    lib_loss.backward()
    lib_grads = _grads(model)

    if generic:
        assert len(generic_triples) == 1 and len(generic_triples[0][0]) == GENERIC
        drawn = generic_triples[0]
    else:
        assert not generic_triples
        drawn = None
    model.zero_grad(set_to_none=True)
    ref_loss, ref_kd, rho, lam = reference_step(model, inputs, setting.teachers, batch, drawn, reweight=reweight,
                                                **{k: v for k, v in PARAMS.items()})
    ref_loss.backward()
    ref_grads = _grads(model)

    # the regime is what the case claims: a hinge active on some triples only, weights that differ
    assert float(ref_kd.detach()) > 0
    if reweight == "paper":
        assert (min(rho.values()) < 0) == (regime == "clamped")
        assert max(lam.values()) - min(lam.values()) > 0.05
    assert float(lib_loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=RTOL)
    assert logs["kd_loss"] == pytest.approx(float(ref_kd.detach()), rel=RTOL)
    entry = method.trace[-1]
    assert entry["lambda"] == pytest.approx(lam, rel=RTOL)
    assert entry["rho"] == pytest.approx(rho, rel=RTOL)
    _assert_same_grads(lib_grads, ref_grads)


def test_hinge_is_active_on_some_triples_only():
    """The reference cases exercise both sides of eq. 11's max (so a reversed hinge changes the loss)."""
    setting = Setting("VBPR", TWO)
    with torch.no_grad():
        for m, teacher in setting.teachers.items():
            b = setting.batch
            ds = _margin(*setting.model(setting.inputs.only(m)), b.users, b.pos, b.neg)
            dt = _margin(teacher.user_reps, teacher.item_reps, b.users, b.pos, b.neg)
            assert 0 < int((dt > ds).sum()) < BATCH


# -- rho and lambda, pinned per modality ---------------------------------------------------------

@pytest.mark.parametrize("dims", [TWO, THREE], ids=["2mod", "3mod"])
@pytest.mark.parametrize("regime", ["positive", "clamped"])
def test_rho_and_lambda_per_modality(dims, regime, tmp_path, monkeypatch):
    """rho^m = mean(Delta s - Delta s^{m bar}) / mean(Delta t^m), lambda_m = 1 - rho^m / sum rho (clamped)."""
    setting = Setting("VBPR", dims, regime)
    model, inputs, b = setting.model, setting.inputs, setting.batch
    method = setting.method(monkeypatch, tmp_path, trace_every=1, **PARAMS)
    with model.step_scope():
        method.batch_loss(model, inputs, b)
    entry = method.trace[-1]

    with torch.no_grad():
        full = _margin(*model(inputs), b.users, b.pos, b.neg)
        ate = {m: float((full - _margin(*model(inputs.ablate(m)), b.users, b.pos, b.neg)).mean())
               for m in inputs.names}
        teacher_mean = {m: float(_margin(t.user_reps, t.item_reps, b.users, b.pos, b.neg).mean())
                        for m, t in setting.teachers.items()}
    rho = {m: ate[m] / teacher_mean[m] for m in inputs.names}
    clamped = {m: max(r, PARAMS["rho_floor"]) for m, r in rho.items()}
    lam = {m: 1 - clamped[m] / sum(clamped.values()) for m in inputs.names}

    assert all(t > 0 for t in teacher_mean.values())
    assert entry["ate"] == pytest.approx(ate, rel=RTOL)
    assert entry["teacher_margin"] == pytest.approx(teacher_mean, rel=RTOL)
    assert entry["rho"] == pytest.approx(rho, rel=RTOL)  # reported before clamping
    assert entry["lambda"] == pytest.approx(lam, rel=RTOL)
    assert sum(entry["lambda"].values()) == pytest.approx(len(dims) - 1)
    if regime == "clamped":
        first = inputs.names[0]
        assert entry["rho"][first] < 0
        assert entry["lambda"][first] == pytest.approx(1 - PARAMS["rho_floor"] / sum(clamped.values()), rel=RTOL)
        assert entry["lambda"][first] == max(entry["lambda"].values())  # the hurting modality gets the most weight
    else:
        # the modality with the lowest rho (most under-optimised) gets the largest weight
        assert min(rho, key=rho.get) == max(entry["lambda"], key=entry["lambda"].get)
        assert len({round(r, 6) for r in rho.values()}) == len(rho)  # distinct rho: a swapped lambda shows


def test_lambda_kd_scales_only_the_distillation_term(tmp_path, monkeypatch):
    """total(lambda_kd) - total(0) = lambda_kd * kd_loss, for two values of lambda_kd."""
    setting = Setting("VBPR", TWO)
    totals = {}
    for lambda_kd in (0.0, 0.3, 2.0):
        method = setting.method(monkeypatch, tmp_path, **{**PARAMS, "lambda_kd": lambda_kd})
        with setting.model.step_scope():
            total, logs = method.batch_loss(setting.model, setting.inputs, setting.batch)
        totals[lambda_kd] = float(total.detach()), logs["kd_loss"]
    base = totals[0.0][0]
    for lambda_kd in (0.3, 2.0):
        total, kd = totals[lambda_kd]
        assert kd > 0
        assert total - base == pytest.approx(lambda_kd * kd, rel=1e-9)
