"""Fair hyperparameter search on validation Recall@20, one budget for every method (Optuna).

``tune(dataset, backbone, method, trials=N, epochs_budget=E)``:

1. **Search** over :func:`ckdlab.search_space.search_space` (the paper's grids
   plus the backbone's and the method's own). Each trial is one
   :class:`~ckdlab.config.TrainConfig` trained through :func:`ckdlab.experiments.run`
   (so cached, locked and resumable like every run) with ``max_epochs=E``,
   early stopping on validation Recall@20 and ``evaluate_test=False``: a
   search never reads the test split. The objective is the validation
   Recall@20 of the trial's best epoch, nothing else.
2. **Pruning**: every validation evaluation is reported to the trial
   (``trial.report(recall@20, epoch)``); Optuna's pruner (Hyperband by
   default, or successive halving / median) stops weak trials early.
3. **Budget**: every method gets ``N`` trials of at most ``E`` epochs with the
   same sampler and pruner; the budget is stored in the study's user attributes
   and listed in the output with what was spent (trials, epochs).
4. **Final runs**: the best completed trial's settings are trained once per
   seed of ``seeds`` with ``evaluate_test=True``: the only runs that read the test split.

The study is persistent (:mod:`ckdlab.studies`): running the same search again
resumes it; finished trials are kept, a trial that was killed or interrupted is
marked failed and retried with the same settings. Several processes (or
machines, with ``storage=`` an RDB URL) may work on one study at once.
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from . import studies
from .checkpoint import checkpoint_path, discard_checkpoint
from .config import TrainConfig
from .experiments import load_dataset, make_config, result_key, run
from .faults import TrainingDiverged
from .search_space import apply_params, grid_size, search_space

#: The objective: validation Recall@20 (the paper's model selection).
METRIC = "recall@20"
SAMPLERS = ("auto", "tpe", "random", "grid")
PRUNERS = ("hyperband", "halving", "median", "none")
#: Hyperband / successive halving: keep the best 1/3 of trials at each rung (rungs at 1, 3, 9, ... epochs).
REDUCTION_FACTOR = 3
#: A sampler's repeats of earlier settings spend no budget; after this many draws per trial, the search stops.
MAX_DRAWS_PER_TRIAL = 20
_STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
                TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def resolve_sampler(name: str, space: dict, trials: int) -> str:
    """``auto``: the grid when the budget covers every point of it (nothing left to chance), else TPE."""
    if name == "auto":
        return "grid" if space and grid_size(space) <= int(trials) else "tpe"
    return name


def default_min_epochs(epochs_budget: int) -> int:
    """Epochs before a trial can first be pruned: a ninth of the budget (rungs at E/9, E/3, E), at least 1.

    At epoch 1 the models' validation scores are near zero and say little about
    where they end (a slow learning rate ranks last there and first at the end).
    """
    return max(1, int(epochs_budget) // 9)


def make_sampler(name: str, space: dict, seed: int) -> optuna.samplers.BaseSampler:
    """``tpe``, ``random`` or ``grid`` (the full grid of ``space``, visited in a seeded order)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({k: list(v) for k, v in space.items()}, seed=seed)
    raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")


def make_pruner(name: str, epochs_budget: int, min_epochs: int = 1) -> optuna.pruners.BasePruner:
    """``hyperband`` (default), ``halving`` (successive halving), ``median`` or ``none``; steps are epochs,
    and no trial is pruned before ``min_epochs``."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=int(min_epochs), max_resource=int(epochs_budget),
                                              reduction_factor=REDUCTION_FACTOR)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=int(min_epochs), reduction_factor=REDUCTION_FACTOR)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=int(min_epochs))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; expected one of {PRUNERS}")


def search_config(backbone: str, method: str, *, epochs_budget: int, seed: int = 0, base: TrainConfig | None = None,
                  device: str = "auto") -> TrainConfig:
    """What every trial starts from: ``base`` (default TrainConfig) for ``backbone``/``method``,
    ``max_epochs=epochs_budget`` (CKD's teachers too), early stopping on Recall@20, no test split."""
    base = base or TrainConfig()
    fields = {k: v for k, v in base.template().items()  # lr None unless given: the searched backbone's default
              if k not in ("backbone", "method", "seed", "max_epochs", "device", "backbone_params", "method_params")}
    fields.update(select_metric=METRIC, evaluate_test=False, eval_by_modality=False, progress=False)
    return make_config(backbone, method, seed=seed, max_epochs=epochs_budget, device=device,
                       teacher_epochs=epochs_budget if method == "ckd" else None,
                       backbone_params=base.backbone_params, method_params=base.method_params, **fields)


def default_study_name(dataset, backbone: str, method: str, *, seed: int, epochs_budget: int, sampler: str,
                       pruner: str) -> str:
    """One study per dataset content, backbone, method, seed, epoch budget, sampler and pruner."""
    return (f"{dataset.name}-{dataset.fingerprint}-{backbone.lower()}-{method.lower()}-seed{seed}"
            f"-e{epochs_budget}-{sampler}-{pruner}")


# -- one trial ------------------------------------------------------------------------------------

class _Reporter:
    """``on_evaluation`` of a trial's run: report validation Recall@20 per epoch, raise when pruned."""

    def __init__(self, trial: optuna.Trial):
        self.trial, self.last_epoch = trial, 0

    def __call__(self, epoch: int, valid: dict) -> None:
        self.last_epoch = epoch
        self.trial.report(float(valid[METRIC]), step=int(epoch))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: valid {METRIC} {valid[METRIC]:.4f}")

    def replay(self, history: list) -> None:
        """A cached result's curve, so the pruner decides as it would have during training."""
        for entry in history:
            self(entry["epoch"], entry["valid"])


@dataclass
class _Objective:
    base: TrainConfig
    space: dict
    dataset: object
    cache_dir: object

    def __call__(self, trial: optuna.Trial) -> float:
        studies.claim(trial)
        params = {name: trial.suggest_categorical(name, list(values)) for name, values in self.space.items()}
        earlier = studies.earlier_run(trial.study, params, trial.number)
        if earlier is not None:  # the sampler asked again: answer as before, spend no budget
            trial.set_user_attr(studies.REPEAT_OF, earlier.number)
            if earlier.state == TrialState.COMPLETE:
                return float(earlier.value)
            raise optuna.TrialPruned(f"repeat of trial {earlier.number}")
        config = apply_params(self.base, params)
        trial.set_user_attr("key", result_key(config, self.dataset))
        reporter = _Reporter(trial)
        try:
            result = run(config, self.dataset, cache_dir=self.cache_dir, on_evaluation=reporter)
            if result.extras.get("cached"):
                reporter.replay(result.history)
        except optuna.TrialPruned:
            trial.set_user_attr("epochs_run", reporter.last_epoch)
            discard_checkpoint(checkpoint_path(config, self.dataset, self.cache_dir))  # never resumed
            raise
        except TrainingDiverged as exc:
            trial.set_user_attr(studies.DIVERGED, True)
            trial.set_user_attr(studies.ERROR, str(exc))
            trial.set_user_attr("epochs_run", int(exc.epoch))
            raise
        trial.set_user_attr("epochs_run", int(result.epochs_run))
        trial.set_user_attr("best_epoch", int(result.best_epoch))
        trial.set_user_attr("cached", bool(result.extras.get("cached", False)))
        trial.set_user_attr("sec_per_epoch", float(result.timing.get("train_seconds_per_epoch", 0.0)))
        return float(result.valid[METRIC])


# -- the outcome -----------------------------------------------------------------------------------

@dataclass
class TuneResult:
    """A search and its final runs.

    ``trials`` has one row per trial (settings, validation Recall@20, epochs run,
    state, whether it counts against the budget); ``budget`` what every method
    gets, ``spent`` what this search used; ``best`` the chosen trial;
    ``final`` one row per seed of the chosen settings, the only runs with test metrics.
    """

    study_name: str
    storage: str
    budget: dict
    spent: dict
    trials: object  # pandas.DataFrame
    best: dict | None
    final: list = field(default_factory=list)
    #: The feature normalisation of the searched dataset (``Dataset.normalization``).
    normalize: dict | None = None

    def to_dict(self) -> dict:
        return {"study": self.study_name, "storage": self.storage, "budget": self.budget, "spent": self.spent,
                "best": self.best, "final": self.final, "normalize": self.normalize,
                "trials": json.loads(self.trials.to_json(orient="records"))}

    def to_json(self, path) -> Path:
        from .store import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, default=str))
        return path

    def summary(self) -> str:
        """The printed account: budget, every trial, the choice, the final runs."""
        b, s = self.budget, self.spent
        features = (", ".join(f"{m} {how}" for m, how in self.normalize.items()) if self.normalize else "as read")
        lines = [f"study {self.study_name} ({self.storage}); features {features}",
                 f"budget: {b['trials']} trials x <= {b['epochs_per_trial']} epochs, sampler {b['sampler']}, "
                 f"pruner {b['pruner']}, objective valid {b['metric']}",
                 f"spent: {s['trials']} trials ({s['complete']} complete, {s['pruned']} pruned, "
                 f"{s['diverged']} diverged), {s['epochs']} of {b['trials'] * b['epochs_per_trial']} epochs; "
                 f"{s['retried']} killed/failed trial(s) retried", ""]
        with _pandas_wide():
            lines.append(self.trials.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        lines.append("")
        if self.best is None:
            lines.append("no completed trial: nothing chosen")
        else:
            lines.append(f"chosen: trial {self.best['number']}, valid {b['metric']} {self.best['value']:.4f}, "
                         f"settings {json.dumps(self.best['params'])}")
        for row in self.final:
            lines.append(f"final seed {row['seed']}: test recall@20 {row['test'].get('recall@20', math.nan):.4f}, "
                         f"ndcg@20 {row['test'].get('ndcg@20', math.nan):.4f}; valid recall@20 "
                         f"{row['valid'].get('recall@20', math.nan):.4f}; best epoch {row['best_epoch']} of "
                         f"{row['epochs_run']}")
        return "\n".join(lines)


class _pandas_wide:
    def __enter__(self):
        import pandas as pd

        self._ctx = pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def trials_frame(study: optuna.Study, counted_numbers: set[int]):
    """One row per trial of ``study``: number, state, counts, valid score, epochs, settings, bookkeeping."""
    import pandas as pd

    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        a = t.user_attrs
        rows.append({
            "trial": t.number,
            "state": ("repeat" if studies.REPEAT_OF in a else "diverged" if a.get(studies.DIVERGED)
                  else _STATE_NAMES.get(t.state, t.state.name.lower())),
            "counts": t.number in counted_numbers,
            f"valid_{METRIC}": t.value if t.value is not None else math.nan,
            "epochs_run": a.get("epochs_run"),
            "best_epoch": a.get("best_epoch"),
            **dict(t.params),
            "cached": a.get("cached", False),
            "retry_of": a.get(studies.RETRY_OF),
            "repeat_of": a.get(studies.REPEAT_OF),
            "error": a.get(studies.ERROR, ""),
        })
    frame = pd.DataFrame(rows)
    for column in ("epochs_run", "best_epoch", "retry_of", "repeat_of") if rows else ():  # whole numbers, missing where unknown
        frame[column] = pd.array([None if v is None or v != v else int(v) for v in frame[column]], dtype="Int64")
    return frame


# -- the search ------------------------------------------------------------------------------------

def _identity(data, base: TrainConfig, space: dict, epochs_budget: int, sampler: str, pruner: str) -> dict:
    """What makes two invocations the same search (stored in the study; a resume must match it)."""
    return {"dataset": {"name": data.name, "fingerprint": data.fingerprint}, "backbone": base.backbone,
            "method": base.method, "seed": base.seed, "epochs_per_trial": int(epochs_budget), "sampler": sampler,
            "pruner": pruner, "metric": METRIC, "space": {k: list(v) for k, v in space.items()},
            "base": base.identity()}


# Config fields that once were part of a run's identity and no longer are (they never changed a
# number): a study started before their retirement is still the same search.
_RETIRED_BASE_FIELDS = ("eval_by_modality",)


def _comparable(identity: dict | None) -> dict | None:
    """A search identity as resuming compares it: without retired fields, and without the base's value
    of any setting the space searches (every trial sets it, so the base's value, e.g. a package
    default that changed since, never reaches a run)."""
    if identity is None or "base" not in identity:
        return identity
    searched = set(identity.get("space", {}))
    base = {k: v for k, v in identity["base"].items() if k not in _RETIRED_BASE_FIELDS and k not in searched}
    for field, prefix in (("backbone_params", "backbone."), ("method_params", "method.")):
        if isinstance(base.get(field), dict):
            base[field] = {k: v for k, v in base[field].items() if prefix + k not in searched}
    return {**identity, "base": base}


def _open_study(name: str, url: str, identity: dict, budget: dict, sampler, pruner, heartbeat_interval: int,
                grace_period: int) -> optuna.Study:
    storage = studies.open_storage(url, heartbeat_interval, grace_period)
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    identity = json.loads(json.dumps(identity))  # as the storage gives it back (tuples become lists)
    stored = study.user_attrs.get("search")
    if stored is None:
        study.set_user_attr("search", identity)
    elif (was := _comparable(stored)) != (now := _comparable(identity)):
        differ = sorted(k for k in now if was.get(k) != now[k])
        raise ValueError(f"study {name!r} holds another search (differs in {', '.join(differ)}); "
                         f"pass another --study name or the same settings")
    if study.user_attrs.get("budget") != budget:
        study.set_user_attr("budget", budget)  # more (or fewer) trials: the study's budget says which
    return study


def _spent(study: optuna.Study, counted: list) -> dict:
    states = [("diverged" if t.user_attrs.get(studies.DIVERGED) else _STATE_NAMES[t.state]) for t in counted]
    return {"trials": len(counted), "complete": states.count("complete"), "pruned": states.count("pruned"),
            "diverged": states.count("diverged"),
            "epochs": int(sum(int(t.user_attrs.get("epochs_run", 0)) for t in counted)),
            "retried": sum(1 for t in study.get_trials(deepcopy=False) if studies.RETRY_OF in t.user_attrs)}


def _trials_bar(total: int, done: int, enabled: bool, desc: str):
    from tqdm.std import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="trial", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0)


def tune(dataset="synthetic", backbone: str = "VBPR", method: str = "none", *, trials: int = 20,
         epochs_budget: int = 50, seed: int = 0, seeds=None, storage: str | None = None, study_name: str | None = None,
         sampler: str = "auto", pruner: str = "hyperband", min_epochs: int | None = None,
         space: dict | None = None, base: TrainConfig | None = None,
         normalize=None, cache_dir=None, device: str = "auto", final: bool = True, progress: bool = True,
         heartbeat_interval: int = 10, grace_period: int = 30) -> TuneResult:
    """Search ``backbone`` + ``method`` on validation Recall@20, then train the choice once per seed.

    Parameters
    ----------
    dataset
        Dataset, folder or ``"synthetic"``.
    trials : int
        Trials that spend budget (completed, pruned or diverged); the same for every method.
        With ``sampler="grid"`` at most the grid's size.
    epochs_budget : int
        ``max_epochs`` of every trial (and of CKD's teachers and of the final runs).
    seed : int
        Seed of every trial's training and of the sampler.
    seeds : iterable of int, optional
        Seeds of the final runs (default ``[seed]``).
    storage : str, optional
        SQLAlchemy URL of the study (a cluster's database); default SQLite at ``<cache>/studies/<name>.db``.
    study_name : str, optional
        Default :func:`default_study_name`.
    sampler, pruner : str
        See :data:`SAMPLERS` and :data:`PRUNERS`. ``auto``: the full grid when the
        budget covers it, else TPE. A sampler's repeat of settings an earlier trial
        ran answers with that trial's outcome and spends no budget.
    min_epochs : int, optional
        No trial is pruned before this epoch (default :func:`default_min_epochs`).
    space : dict, optional
        ``{parameter: values}`` instead of :func:`ckdlab.search_space.search_space`.
    base : TrainConfig, optional
        Other training settings (batch size, patience, ...); backbone, method,
        seed, epochs and device come from the arguments.
    normalize
        Feature normalisation of the loader (:mod:`ckdlab.data.normalize`).
    final : bool
        Train the chosen settings on ``seeds`` (the only runs that read the test split).
    heartbeat_interval, grace_period : int
        Seconds between a running trial's heartbeats, and after which a silent one is failed (and retried).

    Returns
    -------
    TuneResult
    """
    if int(trials) < 1 or int(epochs_budget) < 1:
        raise ValueError(f"trials and epochs_budget must be >= 1, got {trials} and {epochs_budget}")
    data = load_dataset(dataset, normalize)
    base = search_config(backbone, method, epochs_budget=int(epochs_budget), seed=int(seed), base=base, device=device)
    space = dict(space) if space is not None else search_space(backbone, method, max_epochs=int(epochs_budget))
    target = 1 if not space else int(trials)  # nothing to search (Pop): one trial says it all
    sampler = resolve_sampler(sampler, space, target)
    min_epochs = default_min_epochs(epochs_budget) if min_epochs is None else max(1, int(min_epochs))
    if target > grid_size(space):  # every distinct setting tried: nothing left to spend budget on
        if sampler == "grid":
            warnings.warn(f"{target} trials asked, the grid has {grid_size(space)} points: the budget is "
                          f"{grid_size(space)} trials", RuntimeWarning, stacklevel=2)
        target = grid_size(space)
    pruner_label = pruner if pruner == "none" or min_epochs == 1 else f"{pruner}{min_epochs}"
    name = study_name or default_study_name(data, base.backbone, base.method, seed=int(seed),
                                            epochs_budget=int(epochs_budget), sampler=sampler, pruner=pruner_label)
    url = studies.storage_url(name, cache_dir, storage)
    budget = {"trials": target, "epochs_per_trial": int(epochs_budget), "metric": METRIC, "split": "valid",
              "sampler": sampler, "pruner": pruner, "min_epochs": min_epochs, "seed": int(seed)}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar and the table say what the log would
    bar = None
    try:
        study = _open_study(name, url, _identity(data, base, space, int(epochs_budget), sampler, pruner_label),
                            budget, make_sampler(sampler, space, int(seed)),
                            make_pruner(pruner, int(epochs_budget), min_epochs), heartbeat_interval, grace_period)
        objective = _Objective(base, space, data, cache_dir)
        bar = _trials_bar(target, len(studies.counted_trials(study, target)), progress,
                          f"tune {base.backbone}/{base.method} on {data.name}")
        while True:
            studies.reap_dead_workers(study)
            studies.enqueue_retries(study)
            done = studies.counted_trials(study, target)
            bar.n = len(done)
            bar.refresh()
            if len(done) >= target:
                break
            if len(study.trials) >= MAX_DRAWS_PER_TRIAL * target:  # a sampler that only repeats itself
                warnings.warn(f"study {name}: {len(study.trials)} draws gave {len(done)} distinct settings of "
                              f"{target}; stopping", RuntimeWarning, stacklevel=2)
                break
            study.optimize(objective, n_trials=1, catch=(TrainingDiverged,))
            best = _best(study, target)
            if best is not None:
                bar.set_postfix_str(f"best valid {METRIC} {best.value:.4f} (trial {best.number})")
    finally:
        if bar is not None:
            bar.close()
        optuna.logging.set_verbosity(verbosity)
    counted = studies.counted_trials(study, target)
    best = _best(study, target)
    chosen = None if best is None else {"number": best.number, "value": float(best.value), "params": dict(best.params),
                                        "config": apply_params(base, best.params).to_dict()}
    out = TuneResult(name, studies.redacted(url), budget, _spent(study, counted),
                     trials_frame(study, {t.number for t in counted}), chosen,
                     normalize=dict(data.normalization) if data.normalization else None)
    if final and best is not None:
        out.final = final_runs(apply_params(base, best.params), data, [int(seed)] if seeds is None else seeds,
                               cache_dir=cache_dir, progress=progress)
    return out


def _best(study: optuna.Study, target: int):
    """The best completed trial among the counted ones (ties: the earlier trial)."""
    complete = [t for t in studies.counted_trials(study, target) if t.state == TrialState.COMPLETE]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def final_runs(config: TrainConfig, dataset, seeds, *, cache_dir=None, progress: bool = True) -> list[dict]:
    """``config`` trained once per seed with the test split scored: one plain row per seed."""
    from tqdm.std import tqdm

    rows = []
    for s in tqdm(list(seeds), desc="final runs", unit="seed", disable=not progress, file=sys.stderr):
        cfg = config.replace(seed=int(s), evaluate_test=True)
        result = run(cfg, dataset, cache_dir=cache_dir)
        rows.append({"seed": int(s), "key": result_key(cfg, dataset), "valid": result.valid, "test": result.test,
                     "test_by_modality": result.test_by_modality, "best_epoch": result.best_epoch,
                     "epochs_run": result.epochs_run,
                     "sec_per_epoch": result.timing.get("train_seconds_per_epoch"),
                     "cached": bool(result.extras.get("cached", False))})
    return rows


def comparison_frame(results: dict) -> "object":
    """One row per method of ``{method: TuneResult}``: its budget, what it spent, its choice, its final scores.

    Test columns are the mean (and standard deviation) over the final runs' seeds.
    """
    import numpy as np
    import pandas as pd

    rows = []
    for method, r in results.items():
        test = [row["test"] for row in r.final]
        row = {"method": method, "trials": r.budget["trials"], "epochs_per_trial": r.budget["epochs_per_trial"],
               "trials_spent": r.spent["trials"], "epochs_spent": r.spent["epochs"],
               f"valid_{METRIC}": r.best["value"] if r.best else math.nan,
               "chosen": json.dumps(r.best["params"]) if r.best else "", "seeds": len(test)}
        for metric in ("recall@20", "ndcg@20"):
            values = [t[metric] for t in test if metric in t]
            row[f"test_{metric}"] = float(np.mean(values)) if values else math.nan
            row[f"test_{metric}_std"] = float(np.std(values)) if values else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
