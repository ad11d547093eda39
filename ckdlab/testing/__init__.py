"""``check_backbone``: does a backbone keep the contract CKD, GB and OGM rely on?

In the spirit of scikit-learn's ``check_estimator``: build the model on tiny
synthetic data and test each clause of the contract (docs/backbones.md), one
line per check::

    from ckdlab.testing import check_backbone
    print(check_backbone("path/to/model.py:MyNet"))
    check_backbone(MyNet, raise_on_failure=True)   # in a test suite

The checks (``ckdlab.testing.checks.CHECKS``): construct, forward_cpu,
forward_cuda (when CUDA is present), score_inner_product,
ablation_removes_features, ablation_averages_user_preference,
unablated_uses_features, unablated_uses_user_preference, modality_parameters,
determinism, loss_terms, training_reduces_loss, step_scope_fresh, importable.
"""
from __future__ import annotations

import traceback

from .checks import CHECKS, GATES, Case, check_name
from .report import FAILED, PASSED, SKIPPED, WARNING, BackboneCheckError, CheckReport, CheckResult

__all__ = ["BackboneCheckError", "CheckReport", "CheckResult", "FAILED", "PASSED", "SKIPPED", "WARNING",
           "check_backbone", "tiny_dataset"]


def tiny_dataset(seed: int = 0):
    """The synthetic data the checks run on: 37 users, 53 items, text (7 columns) and image (5 columns).

    Sizes are chosen to differ from every common layer width, so that a
    parameter with 37 rows is a per-user table.
    """
    from ..data import generate_synthetic

    return generate_synthetic(n_users=37, n_items=53, n_factors=4, mean_interactions=9, min_interactions=5,
                              n_categories=3, modalities={"text": (7, 1.0), "image": (5, 0.35)}, seed=seed,
                              name="check")


def _class_and_name(backbone) -> tuple[type, str]:
    if isinstance(backbone, str):
        from ..backbones import resolve_backbone

        resolved = resolve_backbone(backbone)
        return resolved.cls, resolved.name
    return backbone, getattr(backbone, "__dict__", {}).get("name") or getattr(backbone, "__name__", repr(backbone))


def _run(check, case: Case) -> CheckResult:
    try:
        return check(case)
    except Exception as exc:  # a check that crashes is a failed check, reported with where it broke
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return CheckResult(check_name(check), FAILED, f"raised {type(exc).__name__}: {exc} ({where.name}, line {where.lineno})")


def check_backbone(backbone, dataset=None, *, params: dict | None = None, seed: int = 0, steps: int = 20,
                   cuda: bool | None = None, raise_on_failure: bool = False) -> CheckReport:
    """Run the backbone contract on ``backbone`` and report, one result per check.

    Parameters
    ----------
    backbone : type or str
        A :class:`~ckdlab.backbones.Backbone` subclass, a registered name, or a
        spec (``"path/to/file.py:ClassName"``, ``"module:ClassName"``).
    dataset : Dataset, optional
        Data to build the model on; default :func:`tiny_dataset` (two modalities).
        Needs at least one modality, and two for the uni-modal channels to mean anything.
    params : dict, optional
        Constructor hyperparameters (``embedding_dim=16``).
    seed : int
        Torch seed every model is built under.
    steps : int
        Adam steps of ``training_reduces_loss``.
    cuda : bool, optional
        Run ``forward_cuda``: None (default) when a CUDA device is present,
        False never (a report that reads the same on every machine), True always
        (failed without a device).
    raise_on_failure : bool
        Raise :class:`BackboneCheckError` (an AssertionError listing the failed
        checks) instead of returning a report with failures. Warnings never raise.

    Returns
    -------
    CheckReport
        Iterable of :class:`CheckResult` (``name``, ``status``, ``message``,
        ``details``); ``report["forward_cpu"]``, ``report.failures``, ``report.ok``;
        ``print(report)`` shows one line per check.

    Checks after ``construct`` and ``forward_cpu`` are skipped when either fails.
    Every check runs on CPU except ``forward_cuda``.
    """
    cls, name = _class_and_name(backbone)
    case = Case(cls, dataset if dataset is not None else tiny_dataset(), dict(params or {}), seed, steps, cuda)
    results: list[CheckResult] = []
    for check in CHECKS:
        broken = [r.name for r in results if r.name in GATES and r.failed]
        if broken:
            results.append(CheckResult(check_name(check), SKIPPED, f"needs {' and '.join(broken)} to pass"))
            continue
        results.append(_run(check, case))
    report = CheckReport(name, results)
    return report.raise_on_failure() if raise_on_failure else report
