"""The checks of :func:`ckdlab.testing.check_backbone`, one function per clause of the contract.

Each check receives a :class:`Case` (the class, a tiny dataset, a seeded
builder) and returns a :class:`~ckdlab.testing.report.CheckResult`. Scores are
compared relative to their scale: ``SAME`` is round-off, ``DIFFERENT`` a real
dependence.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..backbones.base import Backbone
from ..balance.base import Batch, backbone_step
from ..balance.channels import bpr_on_triples
from ..modality import ModalityInputs
from .report import FAILED, PASSED, SKIPPED, WARNING, CheckResult

#: Largest relative score change that still counts as "unchanged" (float32 round-off).
SAME = 1e-4
#: Smallest relative score change that counts as "depends on it".
DIFFERENT = 1e-3


@dataclass
class Case:
    """What every check works on."""

    cls: type
    dataset: object
    params: dict
    seed: int
    steps: int
    cuda: bool | None = None  # None: when a CUDA device is present

    def build(self) -> Backbone:
        torch.manual_seed(self.seed)
        return self.cls(self.dataset, **self.params)

    def inputs(self, device="cpu") -> ModalityInputs:
        return ModalityInputs.from_dataset(self.dataset, device)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.dataset.features)

    def permutation(self, n: int, salt: int = 0) -> torch.Tensor:
        """A fixed random permutation of ``n`` rows that moves every row (mean-preserving shuffle)."""
        order = np.random.default_rng(self.seed + 1000 + salt).permutation(n)
        perm = np.empty(n, dtype=np.int64)
        perm[order] = np.roll(order, -1)  # one cycle through every row: no row stays in place
        return torch.as_tensor(perm)

    def triples(self, n: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fixed (user, positive, negative) triples from the training split."""
        rng = np.random.default_rng(self.seed)
        rows = self.dataset.train[rng.integers(len(self.dataset.train), size=n)]
        neg = rng.integers(self.dataset.n_items, size=n)
        return tuple(torch.as_tensor(a, dtype=torch.long) for a in (rows[:, 0], rows[:, 1], neg))


def result(name: str, status: str, message: str, **details) -> CheckResult:
    return CheckResult(name, status, message, details)


@torch.no_grad()
def scores(model: Backbone, inputs: ModalityInputs) -> torch.Tensor:
    """The full score matrix ``user_reps @ item_reps.T`` in eval mode (what evaluation ranks)."""
    was_training = model.training
    model.eval()
    try:
        users, items = model(inputs)
    finally:
        model.train(was_training)
    return users.double() @ items.double().T


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) / scale


# -- construction and forward --------------------------------------------------------------------

def check_construct(case: Case) -> CheckResult:
    name = "construct"
    if not (isinstance(case.cls, type) and issubclass(case.cls, Backbone)):
        return result(name, FAILED, f"{case.cls!r} is not a subclass of ckdlab.backbones.Backbone")
    model = case.build()
    n_params = sum(p.numel() for p in model.parameters())
    if case.cls.trainable and n_params == 0:
        return result(name, FAILED, "trainable is True but the model has no parameters")
    return result(name, PASSED, f"{case.cls.__name__}(dataset{', **params' if case.params else ''}) "
                                f"built: {n_params:,} parameters")


def _forward_problems(model: Backbone, inputs: ModalityInputs, dataset, device: torch.device) -> list[str]:
    """What is wrong with ``model(inputs)``'s output (empty when nothing)."""
    with torch.no_grad():
        out = model(inputs)
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        return [f"forward must return (user_reps, item_reps) tensors, got {type(out).__name__}"]
    users, items = out
    problems = []
    if users.dim() != 2 or users.shape[0] != dataset.n_users:
        problems.append(f"user_reps has shape {tuple(users.shape)}, expected ({dataset.n_users}, D)")
    if items.dim() != 2 or items.shape[0] != dataset.n_items:
        problems.append(f"item_reps has shape {tuple(items.shape)}, expected ({dataset.n_items}, D)")
    if not problems and users.shape[1] != items.shape[1]:
        problems.append(f"user and item representations differ in size ({users.shape[1]} vs {items.shape[1]}): "
                        f"scores are their inner product")
    for label, t in (("user_reps", users), ("item_reps", items)):
        if t.dtype != torch.float32:
            problems.append(f"{label} is {t.dtype}, expected torch.float32 (the inputs' dtype)")
        if t.device.type != device.type:
            problems.append(f"{label} is on {t.device}, the inputs on {device}")
        elif not torch.isfinite(t).all():
            problems.append(f"{label} holds NaN or Inf")
    return problems


def _variants(inputs: ModalityInputs) -> dict[str, ModalityInputs]:
    """The inputs the trainer and the balancing methods feed: full, each channel, each modality ablated."""
    out = {"full inputs": inputs}
    for m in inputs.names:
        out[f"inputs.only({m!r})"] = inputs.only(m)
        out[f"inputs.ablate({m!r})"] = inputs.ablate(m)
    return out


def _check_forward(case: Case, name: str, device: torch.device) -> CheckResult:
    model = case.build().to(device)
    inputs = case.inputs(device)
    for label, variant in _variants(inputs).items():
        problems = _forward_problems(model, variant, case.dataset, device)
        if problems:
            return result(name, FAILED, f"with {label}: " + "; ".join(problems))
    users, items = model(inputs)
    return result(name, PASSED, f"user_reps ({case.dataset.n_users}, {users.shape[1]}) and item_reps "
                                f"({case.dataset.n_items}, {items.shape[1]}), float32 on {device.type}, "
                                f"for full, uni-modal and ablated inputs")


def check_forward_cpu(case: Case) -> CheckResult:
    return _check_forward(case, "forward_cpu", torch.device("cpu"))


def check_forward_cuda(case: Case) -> CheckResult:
    name = "forward_cuda"
    if case.cuda is False:
        return result(name, SKIPPED, "not requested (cuda=False)")
    if not torch.cuda.is_available():
        if case.cuda:
            return result(name, FAILED, "cuda=True but torch sees no CUDA device")
        return result(name, SKIPPED, "no CUDA device")
    found = _check_forward(case, name, torch.device("cuda"))
    if found.failed:
        return found
    cpu = scores(case.build(), case.inputs())
    gpu = scores(case.build().cuda(), case.inputs("cuda")).cpu()
    change = relative_change(cpu, gpu)
    if change > DIFFERENT:
        return result(name, WARNING, f"CUDA scores differ from CPU scores by {change:.2g} of their scale "
                                     f"(same seed and parameters)", change=change)
    return result(name, PASSED, found.message + "; scores match the CPU's", change=change)


def check_score_inner_product(case: Case) -> CheckResult:
    """Training scores pairs (score_pairs, score_margins); evaluation ranks ``user_reps @ item_reps.T``."""
    name = "score_inner_product"
    model = case.build()
    users, pos, neg = case.triples()
    with torch.no_grad():
        u, i = model(case.inputs())
        full = (u @ i.T).double()
        pairs = model.score_pairs(u, i, users, pos).double()
        margins = model.score_margins(u, i, users, pos, neg).double()
    expected = full[users, pos]
    change = relative_change(pairs, expected)
    if pairs.shape != expected.shape or change > SAME:
        return result(name, FAILED, f"score_pairs differs from the full-catalogue scores user_reps @ item_reps.T "
                                    f"(by {change:.2g} of their scale): evaluation ranks the inner product, so "
                                    f"training must score it too (do not override score_pairs)", change=change)
    margin_change = relative_change(margins, expected - full[users, neg])
    if margin_change > SAME:
        return result(name, FAILED, f"score_margins differs from score(u, i) - score(u, j) (by "
                                    f"{margin_change:.2g} of the scale; do not override score_margins)",
                      change=margin_change)
    return result(name, PASSED, "score_pairs and score_margins agree with user_reps @ item_reps.T")


def check_batch_rows(case: Case) -> CheckResult:
    """A backbone's own ``batch_rows`` (only the batch's rows) must equal ``forward``'s rows, ablated or not."""
    name = "batch_rows"
    model = case.build()
    if not model.computes_batch_rows:
        return result(name, PASSED, "batch_rows is the default (forward, then gather)")
    users, pos, neg = case.triples()
    items = torch.cat([pos, neg])
    inputs = case.inputs()
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # away from the initial values: a term whose weights start at zero must count too
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))
        for variant in [inputs, *(inputs.ablate(m) for m in inputs.names), *(inputs.only(m) for m in inputs.names)]:
            u, i = model(variant)
            bu, bi = model.batch_rows(variant, users, items)
            if bu.shape != u[users].shape or bi.shape != i[items].shape:
                return result(name, FAILED, f"batch_rows returned shapes {tuple(bu.shape)}, {tuple(bi.shape)}; "
                                            f"forward's rows are {tuple(u[users].shape)}, {tuple(i[items].shape)}")
            worst = max(worst, relative_change(bu.double(), u[users].double()),
                        relative_change(bi.double(), i[items].double()))
    if worst > SAME:
        return result(name, FAILED, f"batch_rows differs from forward's rows by {worst:.2g} of their scale "
                                    f"(full or ablated inputs): training would optimise another model than the "
                                    f"one evaluated", change=worst)
    return result(name, PASSED, "batch_rows equals forward's rows (full, ablated and single-modality inputs)",
                  change=worst)


# -- ablation ------------------------------------------------------------------------------------

def _permuted_features(case: Case, inputs: ModalityInputs, m: str) -> ModalityInputs:
    """``inputs`` with ``m``'s item rows shuffled: other features per item, the same item mean."""
    return inputs.with_features(m, inputs.raw(m)[case.permutation(inputs.n_items)])


def check_ablation_removes_features(case: Case) -> CheckResult:
    name = "ablation_removes_features"
    model, inputs = case.build(), case.inputs()
    changes = {}
    for m in case.modalities:
        changes[m] = relative_change(scores(model, inputs.ablate(m)),
                                     scores(model, _permuted_features(case, inputs, m).ablate(m)))
    bad = {m: c for m, c in changes.items() if c > SAME}
    if bad:
        text = ", ".join(f"{m} (by {c:.2g} of the score scale)" for m, c in bad.items())
        return result(name, FAILED, f"with a modality ablated, shuffling its item features still changes the "
                                    f"scores: {text}; read item features as inputs[m] (the item mean when "
                                    f"ablated), never inputs.raw(m) or features kept from the dataset",
                      changes=changes)
    return result(name, PASSED, f"scores with {' / '.join(case.modalities)} ablated do not depend on "
                                f"that modality's item features", changes=changes)


def _preference_parameters(model: Backbone, case: Case, m: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The per-user parameters of ``m``: ``(n_users, ...)`` tensors that ``modality_parameters(m)`` claims
    (and no other modality does) or that are passed as ``preference`` to ``mean_user_preference(..., m)``."""
    n_users = case.dataset.n_users
    seen = []
    with spy_preferences(model) as calls:
        scores(model, case.inputs().ablate(m))
    others = {id(p) for o in case.modalities if o != m for p in model.modality_parameters(o)}
    candidates = [p for p in model.modality_parameters(m) if id(p) not in others]
    candidates += [p for mod, p in calls if mod == m]
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for p in candidates:
        if id(p) in names and p.dim() >= 1 and p.shape[0] == n_users and id(p) not in seen:
            seen.append(id(p))
            out.append((names[id(p)], p))
    return out


@contextmanager
def spy_preferences(model: Backbone):
    """Record ``(modality, preference)`` of every ``mean_user_preference`` call during the block."""
    calls: list[tuple[str, torch.Tensor]] = []
    original = model.mean_user_preference

    def spy(preference, inputs, modality):
        calls.append((modality, preference))
        return original(preference, inputs, modality)

    model.mean_user_preference = spy  # an instance attribute shadows the method
    try:
        yield calls
    finally:
        del model.mean_user_preference


@contextmanager
def shuffled_rows(params: list[torch.nn.Parameter], perm: torch.Tensor):
    """Parameters with their (user) rows permuted during the block, restored after."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.copy_(p[perm.to(p.device)])
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def _preference_changes(case: Case, ablated: bool) -> tuple[dict, dict]:
    """Per modality: names of its per-user parameters and the relative score change when their rows are shuffled."""
    model, inputs = case.build(), case.inputs()
    found, changes = {}, {}
    for m in case.modalities:
        prefs = _preference_parameters(model, case, m)
        found[m] = [n for n, _ in prefs]
        if not prefs:
            continue
        x = inputs.ablate(m) if ablated else inputs
        before = scores(model, x)
        with shuffled_rows([p for _, p in prefs], case.permutation(case.dataset.n_users, salt=1)):
            after = scores(model, x)
        changes[m] = relative_change(before, after)
    return found, changes


def _no_preferences_text(found: dict) -> str:
    none = [m for m, names in found.items() if not names]
    return f"; {', '.join(none)} without per-user parameters" if none else ""


def check_ablation_averages_user_preference(case: Case) -> CheckResult:
    name = "ablation_averages_user_preference"
    found, changes = _preference_changes(case, ablated=True)
    bad = {m: c for m, c in changes.items() if c > SAME}
    if bad:
        text = ", ".join(f"{m} ({', '.join(found[m])}: by {c:.2g} of the score scale)" for m, c in bad.items())
        return result(name, FAILED, f"with a modality ablated, shuffling the users' rows of its preference "
                                    f"still changes the scores: {text}; pass every user-side preference for m "
                                    f"through self.mean_user_preference(preference, inputs, m)", changes=changes)
    checked = [m for m in changes]
    if not checked:
        return result(name, PASSED, "no per-user preference parameters to average (none of shape "
                                    "(n_users, ...) in modality_parameters or passed to mean_user_preference)")
    return result(name, PASSED, f"with {' / '.join(checked)} ablated, scores use the users' mean preference"
                                + _no_preferences_text(found), changes=changes)


def check_unablated_uses_features(case: Case) -> CheckResult:
    name = "unablated_uses_features"
    model, inputs = case.build(), case.inputs()
    changes = {m: relative_change(scores(model, inputs), scores(model, _permuted_features(case, inputs, m)))
               for m in case.modalities}
    unused = [m for m, c in changes.items() if c < DIFFERENT]
    if unused:
        return result(name, FAILED, f"scores do not depend on the features of {', '.join(unused)} even when "
                                    f"not ablated: the model ignores inputs[m] (then there is nothing to "
                                    f"balance)", changes=changes)
    return result(name, PASSED, f"scores depend on the features of {' and '.join(case.modalities)}",
                  changes=changes)


def check_unablated_uses_user_preference(case: Case) -> CheckResult:
    name = "unablated_uses_user_preference"
    found, changes = _preference_changes(case, ablated=False)
    unused = [m for m, c in changes.items() if c < DIFFERENT]
    if unused:
        return result(name, FAILED, f"scores do not depend on the per-user parameters of {', '.join(unused)} "
                                    f"({'; '.join(', '.join(found[m]) for m in unused)}) even when not "
                                    f"ablated", changes=changes)
    if not changes:
        return result(name, PASSED, "no per-user preference parameters (scores use users' IDs only)")
    return result(name, PASSED, f"scores depend on the users' preferences for {' and '.join(changes)}"
                                + _no_preferences_text(found), changes=changes)


# -- parameters, determinism, training -----------------------------------------------------------

def check_modality_parameters(case: Case) -> CheckResult:
    name = "modality_parameters"
    model = case.build()
    own = {id(p) for p in model.parameters()}
    owner: dict[int, str] = {}
    sizes, empty = {}, []
    for m in case.modalities:
        params = list(model.modality_parameters(m))
        if not params:
            empty.append(m)
        for p in params:
            if not isinstance(p, torch.nn.Parameter) or id(p) not in own:
                return result(name, FAILED, f"modality_parameters({m!r}) returns a tensor of shape "
                                            f"{tuple(p.shape)} that is not a parameter of the model")
            if id(p) in owner and owner[id(p)] != m:
                return result(name, FAILED, f"a parameter of shape {tuple(p.shape)} belongs to both "
                                            f"{owner[id(p)]!r} and {m!r}: modality parameter sets must be disjoint")
            owner[id(p)] = m
        sizes[m] = (len(params), sum(p.numel() for p in params))
    if empty:
        return result(name, WARNING, f"no parameters for {', '.join(empty)}: Gradient Blending and OGM-GE "
                                     f"cannot balance such a modality (CKD still works)")
    text = "; ".join(f"{m}: {n} tensor{'s' * (n != 1)}, {k:,} values" for m, (n, k) in sizes.items())
    return result(name, PASSED, f"{text}; disjoint")


def check_determinism(case: Case) -> CheckResult:
    name = "determinism"
    a, b = case.build(), case.build()
    sa, sb = a.state_dict(), b.state_dict()
    differ = [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]
    if differ or set(sb) - set(sa):
        return result(name, FAILED, f"two models built under the same torch seed differ in {differ[:3]}: draw "
                                    f"every random number from torch's generator")
    inputs = case.inputs()
    first, again, other = scores(a, inputs), scores(a, inputs), scores(b, inputs)
    if not torch.equal(first, again):
        return result(name, FAILED, "two forward passes of one model (eval mode) give different scores")
    if not torch.equal(first, other):
        return result(name, FAILED, "two models built under the same seed give different scores")
    return result(name, PASSED, "same seed, same parameters and scores")


def check_loss_terms(case: Case) -> CheckResult:
    name = "loss_terms"
    model = case.build()
    users, pos, neg = case.triples(64)
    u, i = model(case.inputs())
    for label, value in (("regularization", model.regularization(u, i, users, pos, neg)),
                         ("auxiliary_loss", model.auxiliary_loss(u, i, users, pos, neg))):
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            return result(name, FAILED, f"{label} must return a 0-dim tensor, got {value!r:.60}")
        if not torch.isfinite(value):
            return result(name, FAILED, f"{label} is not finite")
    if model.regularization(u, i, users, pos, neg) < 0:
        return result(name, FAILED, "regularization is negative")
    return result(name, PASSED, "regularization and auxiliary_loss are finite scalars")


def _train_steps(model: Backbone, case: Case, inputs: ModalityInputs, steps: int,
                 after_step: Callable[[int], None] | None = None) -> None:
    """Adam steps on fixed triples, as the trainer takes them: every forward pass of the step (the full
    model and each uni-modal channel, as a balancing method adds them) inside one step_scope, then
    backward and the optimizer step outside it."""
    users, pos, neg = case.triples()
    batch = Batch(users, pos, neg)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        optimizer.zero_grad()
        with model.step_scope():
            loss, *_ = backbone_step(model, inputs, batch, reg_weight=1e-4)
            for m in inputs.names:  # the uni-modal channels a balancing method adds to the step
                u, i = model(inputs.only(m))
                loss = loss + 0.1 * torch.nn.functional.softplus(-model.score_margins(u, i, users, pos, neg)).mean()
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(step)


def check_training_reduces_loss(case: Case) -> CheckResult:
    name = "training_reduces_loss"
    if not case.cls.trainable:
        return result(name, SKIPPED, "trainable is False (nothing to train)")
    model, inputs = case.build(), case.inputs()
    triples = case.triples()
    before = bpr_on_triples(model, inputs, triples)
    _train_steps(model, case, inputs, case.steps)
    after = bpr_on_triples(model, inputs, triples)
    if not after < 0.99 * before:
        return result(name, FAILED, f"{case.steps} Adam steps (lr 1e-2) on {len(triples[0])} training triples "
                                    f"did not reduce their BPR loss ({before:.4f} -> {after:.4f}): do the "
                                    f"parameters reach the scores?", before=before, after=after)
    return result(name, PASSED, f"{case.steps} Adam steps reduced the BPR loss on {len(triples[0])} training "
                                f"triples", before=before, after=after)


def check_step_scope_fresh(case: Case) -> CheckResult:
    """After every optimizer step, a new scope's passes equal those of a fresh copy with the same weights."""
    name = "step_scope_fresh"
    if not case.cls.trainable:
        return result(name, SKIPPED, "trainable is False (no optimizer steps)")
    model, inputs = case.build(), case.inputs()
    variants = _variants(inputs)
    problems = []

    def compare(step: int) -> None:
        reference = case.build()
        reference.load_state_dict(model.state_dict())
        with model.step_scope():
            scoped = {label: scores(model, x) for label, x in variants.items()}
        for label, x in variants.items():
            change = relative_change(scoped[label], scores(reference, x))
            if change > SAME and len(problems) < 3:
                problems.append(f"step {step + 1}, {label}: off by {change:.2g} of the score scale")

    _train_steps(model, case, inputs, 3, after_step=compare)
    if problems:
        return result(name, FAILED, "after an optimizer step, passes inside a new step_scope return values of "
                                    "earlier steps or of other inputs (" + "; ".join(problems) + "): memoise "
                                    "only through self.memoised(key, source, compute), never in attributes "
                                    "kept across steps")
    return result(name, PASSED, "passes inside each new step_scope match a fresh model with the same weights "
                                "(3 steps, full, uni-modal and ablated inputs)")


def check_importable(case: Case) -> CheckResult:
    """Grid workers are spawned processes: they resolve the backbone from its recorded source."""
    name = "importable"
    module = case.cls.__module__
    if module in ("__main__", "__mp_main__"):
        main = sys.modules.get("__main__")
        if getattr(main, "__file__", None) and getattr(main, case.cls.__qualname__, None) is case.cls:
            return result(name, PASSED, "defined at the top of the main script, which spawned workers run again")
        return result(name, WARNING, f"{case.cls.__qualname__} is defined in __main__ (a notebook cell or an "
                                     f"interactive session): spawned grid workers cannot import it; put it in a "
                                     f"file and use 'path/to/file.py:{case.cls.__qualname__}' or "
                                     f"'module:{case.cls.__qualname__}'")
    if module.startswith("ckdlab_plugin_"):
        import inspect
        from pathlib import Path

        return result(name, PASSED, f"loaded from file {Path(inspect.getfile(case.cls)).name}; workers load it "
                                    f"from the same path")
    return result(name, PASSED, f"workers import it from module {module}")


#: Every check in the order it runs; construct and forward_cpu gate the rest.
CHECKS: tuple[Callable[[Case], CheckResult], ...] = (
    check_construct, check_forward_cpu, check_forward_cuda, check_score_inner_product, check_batch_rows,
    check_ablation_removes_features, check_ablation_averages_user_preference, check_unablated_uses_features,
    check_unablated_uses_user_preference, check_modality_parameters, check_determinism, check_loss_terms,
    check_training_reduces_loss, check_step_scope_fresh, check_importable,
)
GATES = ("construct", "forward_cpu")


def check_name(check: Callable[[Case], CheckResult]) -> str:
    """``check_forward_cpu`` -> ``"forward_cpu"``: the name its results carry."""
    return check.__name__.removeprefix("check_")
