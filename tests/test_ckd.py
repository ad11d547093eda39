"""CKD: losses, counterfactual weights, teachers and their cache, the plain-BPR limit."""
import math

import numpy as np
import pytest
import torch

import ckdlab.balance.teachers as teachers_module
from ckdlab.balance import Batch, TrainContext, backbone_step, build_method
from ckdlab.balance.ckd import paper_weights, released_weights
from ckdlab.config import TrainConfig
from ckdlab.data import load
from ckdlab.losses import (bpr_loss, hinge_distillation, kl_distillation, mse_distillation,
                           tempered_bce_distillation)
from ckdlab.modality import ModalityInputs
from ckdlab.train import fit, training_runner

from conftest import make_tiny_dataset


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_losses_against_hand_computation():
    dt = torch.tensor([1.0, -0.5, 2.0])
    ds = torch.tensor([0.5, 0.5, 3.0])
    assert float(hinge_distillation(dt, ds)) == pytest.approx((0.5 + 0 + 0) / 3)
    assert float(mse_distillation(dt, ds)) == pytest.approx((0.25 + 1 + 1) / 3)
    tau = 0.5
    bce = [-(sig(t / tau) * math.log(sig(s / tau)) + (1 - sig(t / tau)) * math.log(1 - sig(s / tau)))
           for t, s in zip(dt.tolist(), ds.tolist())]
    assert float(tempered_bce_distillation(dt, ds, tau)) == pytest.approx(sum(bce) / 3, rel=1e-5)
    kl = [sig(t / tau) * math.log(sig(t / tau) / sig(s / tau))
          + (1 - sig(t / tau)) * math.log((1 - sig(t / tau)) / (1 - sig(s / tau)))
          for t, s in zip(dt.tolist(), ds.tolist())]
    assert float(kl_distillation(dt, ds, tau)) == pytest.approx(sum(kl) / 3, rel=1e-5)
    assert float(bpr_loss(torch.tensor([2.0]), torch.tensor([1.0]))) == pytest.approx(-math.log(sig(1.0)))


def test_paper_weights_by_hand():
    rho, lam = paper_weights({"text": 0.6, "image": 0.2}, {"text": 2.0, "image": 1.0})
    assert rho == pytest.approx({"text": 0.3, "image": 0.2})
    # lambda_m = 1 - rho_m / (0.3 + 0.2): the under-optimised modality (lower rho) gets more weight
    assert lam == pytest.approx({"text": 0.4, "image": 0.6})


def test_paper_weights_clamp_negative_rho():
    rho, lam = paper_weights({"text": 0.6, "image": -0.3}, {"text": 2.0, "image": 1.0}, rho_floor=1e-6)
    assert rho["image"] == pytest.approx(-0.3)  # reported unclamped
    total = 0.3 + 1e-6
    assert lam["text"] == pytest.approx(1 - 0.3 / total)
    assert lam["image"] == pytest.approx(1 - 1e-6 / total)
    assert 0 <= lam["text"] <= 1 and 0 <= lam["image"] <= 1


def test_released_weights_sum_to_two_for_two_modalities():
    ite = {"text": torch.tensor([1.0, 0.5]), "image": torch.tensor([0.2, 0.5])}
    margin = {"text": torch.tensor([2.0, 1.0]), "image": torch.tensor([1.0, 1.0])}
    w = released_weights(ite, margin)
    c_t, c_v = torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.5])
    assert torch.allclose(w["text"], 1 - (c_t - c_v) / (c_t + c_v))
    assert torch.allclose(w["text"] + w["image"], torch.tensor([2.0, 2.0]))


@pytest.fixture(scope="module")
def small():
    return load("synthetic", n_users=200, n_items=160)


def cfg(**kw):
    base = dict(backbone="VBPR", method="ckd", max_epochs=2, batch_size=512, lr=5e-3, progress=False,
                method_params={"teacher": {"max_epochs": 2}})
    base.update(kw)
    return TrainConfig(**base)


def setup_ckd(dataset, config, cache_dir):
    torch.manual_seed(0)
    from ckdlab.backbones import build_backbone
    model = build_backbone(config.backbone, dataset)
    inputs = ModalityInputs.from_dataset(dataset)
    method = build_method("ckd", **config.method_params)
    method.setup(TrainContext(dataset, config, torch.device("cpu"), cache_dir, inputs,
                              train_run=training_runner(cache_dir)), model)
    return model, inputs, method


def test_lambda_kd_zero_equals_plain_bpr(small, tmp_path):
    config = cfg(method_params={"lambda_kd": 0.0, "teacher": {"max_epochs": 1}})
    model, inputs, method = setup_ckd(small, config, tmp_path)
    batch = Batch(torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    ckd_loss, _ = method.batch_loss(model, inputs, batch)
    plain, *_ = backbone_step(model, inputs, batch, config.reg_weight)
    assert float(ckd_loss.detach()) == pytest.approx(float(plain.detach()), abs=1e-7)


def _centered_scores(teacher):
    """The teacher's scores with each user's mean over items removed (ranking-relevant part only)."""
    scores = teacher.user_reps.double() @ teacher.item_reps.double().T
    return scores - scores.mean(dim=1, keepdim=True)


def _relative_change(a, b):
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("modality", ["text", "image"])
def test_teachers_see_only_their_modality(modality, tmp_path):
    """A teacher's ranking ignores the other modality's item rows and depends on its own.

    Permuting item rows keeps every modality's item mean (up to summation order), so the
    teacher of m retrained on data with the other modality's rows permuted ranks the same.
    Raw representations are not compared: parameters that only add a per-user constant to
    the scores (the ablated modality's biases) get a zero gradient in exact arithmetic,
    and Adam turns its rounding noise into lr-sized, CPU-dependent steps; removing each
    user's mean score removes exactly that part.
    """
    base = make_tiny_dataset()
    other = next(o for o in base.modalities if o != modality)
    perm = np.random.default_rng(1).permutation(base.n_items)

    def permuted(name):
        dataset = make_tiny_dataset()
        dataset.features[name] = dataset.features[name][perm]
        return dataset

    config = cfg(max_epochs=2)

    def teacher_scores(dataset, folder):
        teacher = teachers_module.load_or_train_teacher(config, dataset, modality, tmp_path / folder,
                                                        torch.device("cpu"), {"max_epochs": 2},
                                                        train_run=training_runner(tmp_path / folder))
        return _centered_scores(teacher)

    reference = teacher_scores(base, "base")
    # what remains is float32 rounding of the scores (observed ~1e-7); a teacher that sees the
    # other modality changes by ~1, so 1e-3 separates the two on any CPU and thread count
    other_changed = _relative_change(reference, teacher_scores(permuted(other), "other"))
    own_changed = _relative_change(reference, teacher_scores(permuted(modality), "own"))
    assert other_changed < 1e-3, f"the {modality} teacher sees {other}'s item rows (change {other_changed:.3g})"
    assert own_changed > 0.1, f"the {modality} teacher ignores its own features (change {own_changed:.3g})"


def test_teacher_config_ablates_every_other_modality():
    three = make_tiny_dataset(dims={"image": 6, "text": 5, "audio": 4})
    config = cfg(method_params={"lambda_kd": 0.5})
    for m in three.modalities:
        teacher = teachers_module.teacher_config(config, m, three, {"max_epochs": 3})
        assert teacher.ablate == tuple(sorted(set(three.modalities) - {m}))
        assert teacher.method == "none" and teacher.method_params == {} and teacher.max_epochs == 3


def test_teacher_cache_hit_on_second_run(small, tmp_path, monkeypatch):
    first = fit(small, cfg(), cache_dir=tmp_path)
    assert all(not t["cached"] for t in first.teachers.values())

    def no_training(*args, **kwargs):
        raise AssertionError("teacher retrained despite the cache")

    monkeypatch.setattr("ckdlab.train.fit", no_training)  # the runner calls ckdlab.train.fit when it trains
    second = teachers_module.load_or_train_teacher(cfg(), small, "text", tmp_path, torch.device("cpu"),
                                                   {"max_epochs": 2}, train_run=training_runner(tmp_path))
    assert second.cached
    # what the teacher cost travels with it, so the student's record can say it
    trained = first.teachers["text"]["cost"]
    assert second.summary()["cost"] == trained
    assert trained["epochs_run"] == 2 and trained["total_train_seconds"] > 0


def test_ckd_run_records_rho_lambda_trace_and_teachers(small, tmp_path):
    result = fit(small, cfg(method_params={"teacher": {"max_epochs": 2}, "trace_every": 2}), cache_dir=tmp_path)
    for entry in result.history:
        assert set(entry["rho"]) == set(entry["lambda"]) == set(small.modalities)
        assert sum(entry["lambda"].values()) == pytest.approx(1.0)  # M - 1 for the paper's weights
    assert result.trace and {"step", "epoch", "rho", "lambda"} <= set(result.trace[0])
    assert set(result.teachers) == set(small.modalities)
    assert "recall@20" in result.teachers["text"]["test"]


@pytest.mark.parametrize("params", [{"generic": False}, {"reweight": "none"}, {"reweight": "ones"},
                                    {"specific": "kl"}, {"specific": "mse"}, {"reweight": "released"}])
def test_ablation_variants_run(small, tmp_path, params):
    result = fit(small, cfg(max_epochs=1, method_params={**params, "teacher": {"max_epochs": 1}}), cache_dir=tmp_path)
    assert result.history[0]["kd_loss"] >= 0
    if params.get("reweight") == "none":  # uniform (M - 1) / M, summing like eq. 18's weights
        assert result.history[0]["lambda"] == {m: 0.5 for m in small.modalities}
    if params.get("reweight") == "ones":
        assert result.history[0]["lambda"] == {m: 1.0 for m in small.modalities}


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="specific"):
        build_method("ckd", specific="cosine")
    with pytest.raises(ValueError, match="reweight"):
        build_method("ckd", reweight="magic")


def test_two_modalities_need_three_forwards_per_step(small, tmp_path):
    """Full model + one channel per modality; "m ablated" reuses the other modality's channel.

    A pass is a ``batch_rows`` call (VBPR computes only the batch's rows; graph backbones run
    ``forward`` inside it). VBPR's channels score the batch and the generic triples in two calls
    (the batch's rows are the full pass's, memoised), so each channel appears twice."""
    config = cfg(method_params={"teacher": {"max_epochs": 1}})
    model, inputs, method = setup_ckd(small, config, tmp_path)
    assert model.computes_batch_rows
    seen = []
    original = model.batch_rows

    def counting_rows(inp, users, items):
        seen.append(inp.ablated)
        return original(inp, users, items)

    model.batch_rows = counting_rows
    batch = Batch(torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    method.batch_loss(model, inputs, batch)
    assert sorted(map(sorted, seen)) == [[], ["image"], ["image"], ["text"], ["text"]]


@pytest.mark.parametrize("names", [("image", "text"), ("audio", "image", "text")])
def test_without_reweighting_weights_sum_as_eq18(names):
    """Table 3's "w/o re-weight": equal weights summing to M - 1 (eq. 18's sum), not M."""
    from ckdlab.balance.ckd import uniform_weights

    lam = uniform_weights(names, "none")
    assert len(set(lam.values())) == 1
    assert sum(lam.values()) == pytest.approx(len(names) - 1)
    assert uniform_weights(names, "ones") == {m: 1.0 for m in names}  # the older form, kept as an option
