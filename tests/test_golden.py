"""Golden values: the guard that makes a change which moves numbers bump ``NUMBERS_VERSION``.

Every backbone x balancing method (and the reference recommenders) trains for
two short epochs on a tiny dataset; the training losses, the method's own
per-epoch numbers (CKD's rho and lambda, GB's weights, OGM's coefficients) and
summary statistics of the trained score matrix are compared with
``tests/golden.json``, which was written under the current
:data:`ckdlab.provenance.NUMBERS_VERSION`. The integer parts (sampled triples)
must match exactly; trained floats within ``RTOL``.

* Values differ, version unchanged: the change moved numbers. Bump
  ``NUMBERS_VERSION`` in ``ckdlab/provenance.py`` (so no cached result, teacher
  or checkpoint of the old code is reused), then rewrite the goldens.
* Version bumped, goldens older: rewrite them:
  ``.venv/bin/python tests/test_golden.py --write``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_tiny_dataset  # noqa: E402

from ckdlab.config import TrainConfig  # noqa: E402
from ckdlab.data.samplers import BPRSampler  # noqa: E402
from ckdlab.evaluate import representations  # noqa: E402
from ckdlab.provenance import NUMBERS_VERSION  # noqa: E402
from ckdlab.train import fit  # noqa: E402

GOLDEN = Path(__file__).with_name("golden.json")
MULTIMODAL = ("VBPR", "DeepStyle", "MMGCN", "GRCN", "EgoGCN", "MGCN")
METHODS = {"none": {}, "ckd": {"teacher": {"max_epochs": 1}}, "gb": {"super_epoch": 1}, "ogm": {}}
CASES = [(b, m) for b in MULTIMODAL for m in METHODS] + [("MF", "none"), ("Pop", "none"), ("LightGCN", "none")]
#: 12 Adam steps in float32 on 30 users: another CPU's kernels or thread count change the last bits of
#: each step. Measured against goldens written with AVX-512 kernels, 1 thread: default kernels
#: (ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE) moved losses and scores by at most 3.8e-5 relative,
#: 2 threads by 5e-8; 1e-3 leaves 25x room and still catches a change of the arithmetic.
RTOL = 1e-3
#: CKD's rho is a difference of margins (full minus ablated) over a mean: cancellation makes it ~10x
#: more sensitive (1.6e-4 relative measured under default kernels), so it gets 10x the room.
RTOL_BY_PREFIX = {"rho.": 1e-2}
#: Floor for values that are zero up to rounding (e.g. a mean score near 0).
ATOL = 1e-5


def case_config(backbone: str, method: str) -> TrainConfig:
    return TrainConfig(backbone=backbone, method=method, method_params=METHODS[method], max_epochs=2,
                       batch_size=32, lr=5e-3, reg_weight=1e-3, patience=100, eval_by_modality=False,
                       device="cpu", progress=False, checkpoint_every=0, seed=0)


def _method_numbers(entry: dict) -> dict[str, float]:
    out = {}
    for key in ("rho", "lambda", "gb_weights", "ogm_coeff"):
        for m, v in sorted((entry.get(key) or {}).items()):
            out[f"{key}.{m}"] = float(v)
    return out


def golden_values(backbone: str, method: str, cache_dir) -> dict:
    """What the golden file stores for one case (floats are plain Python floats)."""
    data = make_tiny_dataset()
    torch.manual_seed(0)
    result, model, inputs = fit(data, case_config(backbone, method), cache_dir=cache_dir, return_model=True)
    with torch.no_grad():
        user_reps, item_reps = representations(model, inputs)
        scores = (user_reps @ item_reps.T).double()  # the backbone contract: score = inner product
    floats = {f"loss.{h['epoch']}": float(h["loss"]) for h in result.history}
    for h in result.history:
        floats.update({f"{k}.{h['epoch']}": v for k, v in _method_numbers(h).items()})
    floats.update({"scores.mean": float(scores.mean()), "scores.std": float(scores.std()),
                   "scores.abs_mean": float(scores.abs().mean()),
                   "scores.first_user": float(scores[0].sum()), "scores.first_item": float(scores[:, 0].sum())})
    return {"floats": floats, "epochs_run": result.epochs_run}


def sampler_integers() -> list[list[int]]:
    """The first BPR batch drawn from the tiny data: integers, exact on every machine."""
    batch = next(BPRSampler(make_tiny_dataset().train_matrix, seed=0).epoch(16))
    return [np.asarray(a).astype(int).tolist() for a in batch]


def compare(name: str, expected: dict, actual: dict) -> list[str]:
    problems = []
    if expected["epochs_run"] != actual["epochs_run"]:
        problems.append(f"{name}: epochs_run {actual['epochs_run']} != golden {expected['epochs_run']}")
    if set(expected["floats"]) != set(actual["floats"]):
        problems.append(f"{name}: values {sorted(set(actual['floats']) ^ set(expected['floats']))} "
                        f"appear on one side only")
    for key in sorted(set(expected["floats"]) & set(actual["floats"])):
        e, a = expected["floats"][key], actual["floats"][key]
        rtol = next((t for prefix, t in RTOL_BY_PREFIX.items() if key.startswith(prefix)), RTOL)
        if not math.isclose(a, e, rel_tol=rtol, abs_tol=ATOL):
            problems.append(f"{name}: {key} = {a!r}, golden {e!r} (rel. diff {abs(a - e) / max(abs(e), 1e-30):.2e})")
    return problems


HOW_TO_FIX = ("numbers moved. If that was intended, bump NUMBERS_VERSION in ckdlab/provenance.py (cached results, "
              "teachers and checkpoints of the old code must not be reused) and rewrite the goldens: "
              ".venv/bin/python tests/test_golden.py --write")


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN.name} missing: run .venv/bin/python tests/test_golden.py --write")
    return json.loads(GOLDEN.read_text())


def test_golden_values_belong_to_this_numbers_version(golden):
    assert golden["numbers_version"] == NUMBERS_VERSION, (
        f"NUMBERS_VERSION is {NUMBERS_VERSION} but {GOLDEN.name} was written under {golden['numbers_version']}: "
        f"rewrite it with .venv/bin/python tests/test_golden.py --write")
    assert sorted(golden["cases"]) == sorted(f"{b}/{m}" for b, m in CASES), "cases changed: rewrite the goldens"


def test_sampled_integers_are_exact(golden):
    assert sampler_integers() == golden["sampler"], f"the BPR sampler's draws changed: {HOW_TO_FIX}"


@pytest.mark.parametrize("backbone,method", CASES, ids=[f"{b}-{m}" for b, m in CASES])
def test_tiny_run_matches_golden_values(golden, tmp_path, backbone, method):
    name = f"{backbone}/{method}"
    if name not in golden["cases"]:
        pytest.fail(f"no golden values for {name}: rewrite the goldens")
    problems = compare(name, golden["cases"][name], golden_values(backbone, method, tmp_path))
    assert not problems, f"{HOW_TO_FIX}\n" + "\n".join(problems)


def write_goldens() -> None:
    import tempfile

    torch.set_num_threads(1)
    cases = {}
    with tempfile.TemporaryDirectory() as cache:
        for backbone, method in CASES:
            cases[f"{backbone}/{method}"] = golden_values(backbone, method, cache)
            print(f"{backbone}/{method}: {len(cases[f'{backbone}/{method}']['floats'])} values", flush=True)
    payload = {"numbers_version": NUMBERS_VERSION, "torch": torch.__version__.split("+")[0],
               "threads": 1, "sampler": sampler_integers(), "cases": cases}
    GOLDEN.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} for numbers-version {NUMBERS_VERSION}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden.py --write")
    write_goldens()
