"""ckdlab.testing.check_backbone: the built-ins pass; each planted bug is named by the check that guards it.

Every broken model is the example LightGCN-F with one bug; the test asserts that
exactly the expected check fails (or warns), so a check that stops catching its
bug, or starts blaming another clause, fails here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckdlab.examples.lightgcn_features import LightGCNFeatures
from ckdlab.testing import BackboneCheckError, CheckReport, check_backbone
from ckdlab.testing.checks import CHECKS, check_name

BUILT_INS = ["VBPR", "DeepStyle", "MMGCN", "GRCN", "EgoGCN", "MGCN"]
SMALL = {"embedding_dim": 16}


def not_passed(report: CheckReport) -> dict[str, str]:
    return {r.name: r.status for r in report if r.status not in ("passed", "skipped")}


@pytest.mark.parametrize("backbone", BUILT_INS)
def test_built_in_backbones_keep_the_contract(backbone):
    report = check_backbone(backbone)
    assert report.ok and not report.warnings, str(report)
    assert [r.name for r in report] == [check_name(c) for c in CHECKS]
    expected_skips = set() if torch.cuda.is_available() else {"forward_cuda"}
    assert set(report.names("skipped")) == expected_skips


def test_the_example_keeps_the_contract_and_the_report_reads_well():
    report = check_backbone(LightGCNFeatures, params=SMALL, raise_on_failure=True)
    text = str(report)
    head = text.splitlines()[0]
    assert head.startswith("check_backbone(LightGCN-F): ") and "0 warnings, 0 failed" in head
    assert len(text.splitlines()) == 1 + len(CHECKS)
    assert "PASSED  ablation_removes_features:" in text and repr(report) == text
    assert report["training_reduces_loss"].details["after"] < report["training_reduces_loss"].details["before"]
    with pytest.raises(KeyError, match="no check named"):
        report["nope"]


# -- broken models: one planted bug each --------------------------------------------------------

class IgnoresAblation(LightGCNFeatures):
    """Projects the real features even when the modality is ablated."""

    def _project(self, inputs, m):
        return self.projection[m](inputs.raw(m))


class PreferenceNotAveraged(LightGCNFeatures):
    """Keeps each user's own preference for an ablated modality."""

    def mean_user_preference(self, preference, inputs, modality):
        return preference


class NotInnerProduct(LightGCNFeatures):
    """Trains on cosine similarity while evaluation ranks the inner product."""

    @staticmethod
    def score_pairs(user_reps, item_reps, users, items):
        return F.cosine_similarity(user_reps[users], item_reps[items], dim=-1)


class NoModalityParameters(LightGCNFeatures):
    """Claims no parameter for any modality (GB and OGM then have nothing to modulate)."""

    def modality_parameters(self, modality):
        return []


class SharedModalityParameters(LightGCNFeatures):
    """Gives every modality the whole model."""

    def modality_parameters(self, modality):
        return list(self.parameters())


class IgnoresFeatures(LightGCNFeatures):
    """Projects zeros: the item features never reach the scores."""

    def _project(self, inputs, m):
        return self.projection[m](torch.zeros_like(inputs[m]))


class StaleMemo(LightGCNFeatures):
    """Reuses projections computed without autograd from a dict that outlives the step
    (instead of ``self.memoised``, which forgets everything when the step_scope closes)."""

    def _project(self, inputs, m):
        source = inputs.mean(m) if inputs.is_ablated(m) else inputs[m]
        memo = self.__dict__.setdefault("_memo", {})
        hit = memo.get(m)
        if hit is not None and hit[0] is source and not torch.is_grad_enabled():
            return hit[1]
        value = super()._project(inputs, m)
        memo[m] = (source, value)
        return value


class UnseededInit(LightGCNFeatures):
    """Initialises its item embeddings from an unseeded numpy generator."""

    def __init__(self, dataset, **kw):
        super().__init__(dataset, **kw)
        noise = np.random.default_rng().normal(size=tuple(self.item_id.shape)).astype(np.float32)
        self.item_id.data.copy_(torch.as_tensor(noise))


class WrongShapes(LightGCNFeatures):
    """Returns the item representations transposed."""

    def forward(self, inputs):
        users, items = super().forward(inputs)
        return users, items.T


class RowsWithoutBias(LightGCNFeatures):
    """Computes only the batch's rows, but forgets a term forward has (trains another model)."""

    def batch_rows(self, inputs, users, items):
        u, i = self(inputs)
        return u[users], i[items] * 0.5


class NotABackbone(torch.nn.Module):
    def __init__(self, dataset):
        super().__init__()


BROKEN = [
    (IgnoresAblation, {"ablation_removes_features": "failed"}),
    (PreferenceNotAveraged, {"ablation_averages_user_preference": "failed"}),
    (NotInnerProduct, {"score_inner_product": "failed"}),
    (NoModalityParameters, {"modality_parameters": "warning"}),
    (SharedModalityParameters, {"modality_parameters": "failed"}),
    (IgnoresFeatures, {"unablated_uses_features": "failed"}),
    (StaleMemo, {"step_scope_fresh": "failed"}),
    (UnseededInit, {"determinism": "failed"}),
    (WrongShapes, {"forward_cpu": "failed"}),
    (RowsWithoutBias, {"batch_rows": "failed"}),
    (NotABackbone, {"construct": "failed"}),
]


@pytest.mark.parametrize("cls, expected", BROKEN, ids=[c.__name__ for c, _ in BROKEN])
def test_each_planted_bug_is_named_by_its_check(cls, expected):
    params = {} if cls is NotABackbone else SMALL
    report = check_backbone(cls, params=params)
    assert not_passed(report) == expected, str(report)
    (name,) = expected
    assert report[name].message  # says why
    if expected[name] == "failed":
        with pytest.raises(BackboneCheckError, match=name):
            check_backbone(cls, params=params, raise_on_failure=True)
    else:
        assert check_backbone(cls, params=params, raise_on_failure=True).ok  # warnings do not raise


def test_checks_after_a_failed_gate_are_skipped_not_failed():
    report = check_backbone(WrongShapes, params=SMALL)
    assert report.names("failed") == ["forward_cpu"]
    assert report["training_reduces_loss"].status == "skipped"
    assert "needs forward_cpu" in report["training_reduces_loss"].message


def test_a_check_that_crashes_is_reported_as_failed_with_the_exception():
    class CrashingLoss(LightGCNFeatures):
        def auxiliary_loss(self, *args):
            raise RuntimeError("boom")

    report = check_backbone(CrashingLoss, params=SMALL)
    assert report["loss_terms"].status == "failed" and "RuntimeError: boom" in report["loss_terms"].message


def test_a_class_defined_in_main_warns_that_workers_cannot_import_it():
    cls = type("MainNet", (LightGCNFeatures,), {"__module__": "__main__"})
    report = check_backbone(cls, params=SMALL)
    assert not_passed(report) == {"importable": "warning"}
    assert "spawned grid workers cannot import it" in report["importable"].message
