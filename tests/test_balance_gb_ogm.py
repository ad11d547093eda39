"""Gradient Blending and OGM-GE: formulas, hold-out slice, gradient modulation, end-to-end runs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ckdlab.balance.gb  # noqa: F401  (registers "gb")
import ckdlab.balance.ogm  # noqa: F401  (registers "ogm")
from ckdlab.backbones import build_backbone
from ckdlab.balance import Batch, TrainContext, build_method
from ckdlab.balance.gb import GradientBlending, blend_terms, blend_weights, holdout_split
from ckdlab.balance.ogm import OGMGE, ogm_coefficients, ogm_ratios
from ckdlab.config import TrainConfig
from ckdlab.modality import ModalityInputs
from ckdlab.train import fit

from conftest import make_tiny_dataset


def _ctx(dataset, **cfg):
    config = TrainConfig(backbone="VBPR", device="cpu", progress=False, **cfg)
    inputs = ModalityInputs.from_dataset(dataset).ablate(*config.ablate)
    return TrainContext(dataset, config, torch.device("cpu"), Path("/nonexistent-cache"), inputs)


def _setup(method, dataset, backbone="VBPR", **cfg):
    torch.manual_seed(0)
    model = build_backbone(backbone, dataset, embedding_dim=8) if backbone == "VBPR" else build_backbone(backbone, dataset)
    ctx = _ctx(dataset, **cfg)
    method.setup(ctx, model)
    return model, ctx


def _batch(dataset, n=64, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset.train), size=n)
    users, pos = dataset.train[idx, 0], dataset.train[idx, 1]
    neg = rng.integers(dataset.n_items, size=n)
    return Batch(*(torch.as_tensor(a, dtype=torch.long) for a in (users, pos, neg)))


# -- Gradient Blending weight formula ---------------------------------------------------------------

def test_blend_weights_formula_and_normalisation():
    prev_t = {"full": 0.60, "image": 0.65, "text": 0.68}
    prev_v = {"full": 0.70, "image": 0.70, "text": 0.70}
    now_t = {"full": 0.40, "image": 0.55, "text": 0.60}
    now_v = {"full": 0.60, "image": 0.66, "text": 0.65}
    terms = blend_terms(prev_t, prev_v, now_t, now_v)
    # dG = Lv_prev - Lv_now; dO = (Lv - Lt)_now - (Lv - Lt)_prev
    assert terms["dG"] == pytest.approx({"full": 0.10, "image": 0.04, "text": 0.05})
    assert terms["dO"] == pytest.approx({"full": 0.20 - 0.10, "image": 0.11 - 0.05, "text": 0.05 - 0.02})
    w = blend_weights(prev_t, prev_v, now_t, now_v, eps=1e-12)
    raw = {"full": 0.10 / 0.10 ** 2, "image": 0.04 / 0.06 ** 2, "text": 0.05 / 0.03 ** 2}
    z = sum(raw.values())
    assert w == pytest.approx({k: v / z for k, v in raw.items()})
    assert sum(w.values()) == pytest.approx(1.0)


def test_blend_weights_clipping():
    prev_t = {"full": 0.5, "a": 0.5, "b": 0.5}
    prev_v = {"full": 0.7, "a": 0.7, "b": 0.7}
    # a got worse on held-out (dG < 0 -> weight 0); b's overfitting did not change (dO^2 -> eps).
    now_t = {"full": 0.4, "a": 0.45, "b": 0.4}
    now_v = {"full": 0.6, "a": 0.75, "b": 0.6}
    eps = 1e-4
    w = blend_weights(prev_t, prev_v, now_t, now_v, eps=eps)
    assert w["a"] == 0.0
    # full: dG=0.1, dO=0.2-0.2=0 -> 0.1/eps ; b identical
    assert w["full"] == pytest.approx(0.5) and w["b"] == pytest.approx(0.5)
    # tiny but non-zero dO^2 below eps is floored at eps too
    now_t2 = dict(now_t, b=0.4 + 1e-4)
    w2 = blend_weights(prev_t, prev_v, now_t2, now_v, eps=eps)
    assert w2["b"] == pytest.approx(w2["full"])


def test_blend_weights_no_gain_keeps_previous():
    loss = {"full": 0.6, "a": 0.6}
    worse = {"full": 0.7, "a": 0.8}
    prev_w = {"full": 0.3, "a": 0.7}
    assert blend_weights(loss, loss, loss, worse, previous=prev_w) == prev_w
    assert blend_weights(loss, loss, loss, loss) == {"full": 0.5, "a": 0.5}
    with pytest.raises(ValueError):
        blend_weights(loss, loss, loss, loss, eps=0)


# -- Gradient Blending hold-out slice ----------------------------------------------------------------

class _GuardedDataset:
    """Forwards to a Dataset but fails on any access to the validation or test split."""

    def __init__(self, ds):
        self._ds = ds

    def __getattr__(self, name):
        if name in ("valid", "test", "eval_users"):
            raise AssertionError(f"GB read the {name} split")
        if name in ("interaction_matrix", "split"):
            def guarded(split, _f=getattr(self._ds, name)):
                if split != "train":
                    raise AssertionError(f"GB read the {split} split")
                return _f(split)
            return guarded
        return getattr(self._ds, name)


def test_holdout_slice_disjoint_ten_percent_and_train_only():
    ds = make_tiny_dataset()
    guarded = _GuardedDataset(ds)
    gb = GradientBlending()
    _setup(gb, guarded, seed=3)
    train = {tuple(p) for p in ds.train.tolist()}
    hold = {tuple(p) for p in gb.hold_pairs.tolist()}
    mat = gb.training_matrix(guarded).tocoo()
    trained = set(zip(mat.row.tolist(), mat.col.tolist()))
    assert len(hold) == round(0.1 * len(ds.train))
    assert hold.isdisjoint(trained)
    assert hold | trained == train
    assert hold <= train  # never from valid / test
    assert len(np.unique(mat.row)) == ds.n_users  # every user keeps something to train on
    # measurement triples: positives from the right side, negatives outside the user's training set
    for name, pool in (("train", trained), ("holdout", hold)):
        u, i, j = (t.numpy() for t in gb._triples[name])
        assert {(a, b) for a, b in zip(u.tolist(), i.tolist())} <= pool
        assert not any((a, b) in train for a, b in zip(u.tolist(), j.tolist()))
    # same seed, same slice; another seed, another slice
    _, hold2 = holdout_split(ds.train, 0.1, 3)
    assert {tuple(p) for p in ds.train[hold2].tolist()} == hold
    _, hold3 = holdout_split(ds.train, 0.1, 4)
    assert not np.array_equal(hold2, hold3)


def test_gb_batch_loss_weights_heads():
    ds = make_tiny_dataset()
    gb = GradientBlending()
    model, _ = _setup(gb, ds)
    batch = _batch(ds)
    gb.weights = {"full": 1.0, "image": 0.0, "text": 0.0}
    loss_full, logs = gb.batch_loss(model, gb.ctx.inputs, batch)
    assert set(logs) == {"gb_bpr_full"}
    gb.weights = {"full": 0.2, "image": 0.5, "text": 0.3}
    loss_mix, logs = gb.batch_loss(model, gb.ctx.inputs, batch)
    reg_aux = float(loss_full.detach()) - logs["gb_bpr_full"]
    expected = reg_aux + 0.2 * logs["gb_bpr_full"] + 0.5 * logs["gb_bpr_image"] + 0.3 * logs["gb_bpr_text"]
    assert float(loss_mix.detach()) == pytest.approx(expected, rel=1e-5)


# -- OGM coefficient formula -------------------------------------------------------------------------

def test_ogm_coefficients_two_modalities():
    alpha = 0.5
    k = ogm_coefficients({"image": 30.0, "text": 20.0}, alpha)
    assert k["text"] == 1.0
    assert k["image"] == pytest.approx(1 - math.tanh(alpha * 1.5))
    ks = ogm_coefficients({"image": 30.0, "text": 20.0}, alpha, form="shifted")
    assert ks["image"] == pytest.approx(1 - math.tanh(alpha * 0.5)) and ks["text"] == 1.0
    assert ogm_coefficients({"a": 5.0, "b": 5.0}, alpha) == {"a": 1.0, "b": 1.0}


def test_ogm_coefficients_three_modalities_mean_of_others():
    conf = {"a": 10.0, "b": 9.0, "c": 1.0}
    r = ogm_ratios(conf)
    assert r == pytest.approx({"a": 10 / 5.0, "b": 9 / 5.5, "c": 1 / 9.5})
    k = ogm_coefficients(conf, 0.3)
    assert k["a"] == pytest.approx(1 - math.tanh(0.3 * 2.0))
    assert k["b"] == pytest.approx(1 - math.tanh(0.3 * 9 / 5.5))
    assert k["c"] == 1.0
    with pytest.raises(ValueError):
        ogm_ratios({"a": 1.0})


# -- OGM gradient modulation -------------------------------------------------------------------------

def _grads_after(method, model, ds, batch):
    loss, _ = method.batch_loss(model, method.ctx.inputs, batch)
    model.zero_grad(set_to_none=True)
    loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    coeffs = dict(method._pending)
    method.after_backward(model)
    after = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return before, after, coeffs


def _modality_names(model, m):
    ids = {id(p) for p in model.modality_parameters(m)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_ogm_scales_only_dominant_modality():
    ds = make_tiny_dataset()
    ogm = OGMGE(alpha=0.5, ge=False)
    model, _ = _setup(ogm, ds)
    before, after, coeffs = _grads_after(ogm, model, ds, _batch(ds))
    dominant = [m for m, k in coeffs.items() if k < 1]
    assert len(dominant) == 1
    dom = _modality_names(model, dominant[0])
    assert dom
    for n in before:
        expected = before[n] * coeffs[dominant[0]] if n in dom else before[n]
        torch.testing.assert_close(after[n], expected)
    assert any(not torch.equal(after[n], before[n]) for n in dom)


def test_ogm_ge_noise_scope_and_determinism():
    ds = make_tiny_dataset()
    batch = _batch(ds)
    runs = []
    for _ in range(2):
        ogm = OGMGE(alpha=0.5, ge=True, ge_scope="dominant")
        model, _ = _setup(ogm, ds, seed=5)
        runs.append(_grads_after(ogm, model, ds, batch) + (model,))
    (before, after, coeffs, model), (_, after2, _, _) = runs
    dominant = next(m for m, k in coeffs.items() if k < 1)
    dom = _modality_names(model, dominant)
    mod_any = set().union(*(_modality_names(model, m) for m in coeffs))
    for n in before:
        if n in dom:
            assert not torch.allclose(after[n], before[n] * coeffs[dominant])  # noise added
        else:
            torch.testing.assert_close(after[n], before[n])  # other modality and shared params untouched
        torch.testing.assert_close(after[n], after2[n])  # same seed, same noise
    # "all" scope (authors' code): every modality's parameters get noise, shared ones never
    ogm = OGMGE(alpha=0.5, ge=True)
    model, _ = _setup(ogm, ds)
    before, after, _ = _grads_after(ogm, model, ds, batch)
    for n in before:
        if n in mod_any and before[n].numel() > 1:
            assert not torch.equal(after[n], before[n])
        elif n not in mod_any:
            torch.testing.assert_close(after[n], before[n])


def test_ogm_ge_noise_leaves_zero_rows_by_default():
    ds = make_tiny_dataset()
    ogm = OGMGE(ge=True)  # ge_touched_only=True is the default
    model, _ = _setup(ogm, ds)
    before, after, _ = _grads_after(ogm, model, ds, _batch(ds, n=8))
    zero = before["user_pref.image"] == 0
    assert zero.any()
    assert torch.all(after["user_pref.image"][zero] == 0)


def test_ogm_modulation_window():
    ds = make_tiny_dataset()
    ogm = OGMGE(modulation_start=2, modulation_end=3, ge=False)
    model, _ = _setup(ogm, ds)
    assert not ogm.active()
    before, after = _grads_after_inactive(ogm, model, ds)
    for n in before:
        torch.testing.assert_close(after[n], before[n])
    ogm.epoch_end(1, model)
    assert ogm.active() and ogm.active(3) and not ogm.active(4)


def _grads_after_inactive(method, model, ds):
    loss, _ = method.batch_loss(model, method.ctx.inputs, _batch(ds))
    loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    method.after_backward(model)
    return before, {n: p.grad.clone() for n, p in model.named_parameters()}


# -- set-up errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [GradientBlending, OGMGE])
def test_setup_errors(cls):
    with pytest.raises(ValueError, match="modality-specific parameters"):
        _setup(cls(), make_tiny_dataset(), backbone="MF")
    with pytest.raises(ValueError, match="at least two modalities"):
        _setup(cls(), make_tiny_dataset(dims={"image": 6}))
    with pytest.raises(ValueError, match="at least two modalities"):
        _setup(cls(), make_tiny_dataset(), ablate=("text",))


def test_registered_and_bad_params():
    assert isinstance(build_method("GB", super_epoch=2), GradientBlending)
    assert isinstance(build_method("ogm", alpha=0.1), OGMGE)
    with pytest.raises(ValueError):
        OGMGE(coefficient="nope")
    with pytest.raises(ValueError):
        GradientBlending(holdout_fraction=1.5)


# -- end to end ----------------------------------------------------------------------------------------

def _config(method, **params):
    return TrainConfig(backbone="VBPR", method=method, method_params=params, max_epochs=3, batch_size=64,
                       device="cpu", progress=False, eval_by_modality=False, ks=(10, 20),
                       backbone_params={"embedding_dim": 8}, seed=1)


def test_fit_gb_end_to_end():
    ds = make_tiny_dataset()
    res = fit(ds, _config("gb", super_epoch=2))
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    for h in res.history:
        assert set(h["gb_weights"]) == {"full", "image", "text"}
        assert sum(h["gb_weights"].values()) == pytest.approx(1.0)
        assert "gb_bpr_full" in h
    assert "gb_next_weights" in res.history[1] and "gb_next_weights" not in res.history[0]
    assert res.history[2]["gb_weights"] == res.history[1]["gb_next_weights"]
    trace = res.extras["gb"]["trace"]
    assert [t["epoch"] for t in trace] == [0, 2]
    assert res.extras["gb"]["holdout_interactions"] == round(0.1 * len(ds.train))


def test_fit_ogm_end_to_end_deterministic():
    ds = make_tiny_dataset()
    res = fit(ds, _config("ogm", alpha=0.5))
    res2 = fit(ds, _config("ogm", alpha=0.5))
    for h in res.history:
        assert set(h["ogm_coeff"]) == {"image", "text"}
        assert all(0 < v <= 1 for v in h["ogm_coeff"].values())
        assert set(h["ogm_ratio"]) == {"image", "text"} and h["ogm_active"]
    assert [h["loss"] for h in res.history] == [h["loss"] for h in res2.history]
    assert len(res.extras["ogm"]["trace"]) == 3


@pytest.mark.parametrize("method,params", [("gb", {"super_epoch": 1}), ("ogm", {})])
def test_fit_synthetic_smoke(method, params):
    from ckdlab.data import load
    ds = load("synthetic", n_users=150, n_items=120)
    res = fit(ds, _config(method, **params).replace(max_epochs=1, batch_size=512))
    assert res.history and res.epochs_run == 1
