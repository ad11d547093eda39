"""Memory-bounded evaluation: batch size follows free memory, out-of-memory retries smaller."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import ckdlab.evaluate as ev


def random_case(n_users=57, n_items=40, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    users = torch.as_tensor(rng.normal(size=(n_users, dim)), dtype=torch.float32)
    items = torch.as_tensor(rng.normal(size=(n_items, dim)), dtype=torch.float32)
    train = sp.random(n_users, n_items, density=0.15, random_state=1, format="csr")
    truth = sp.random(n_users, n_items, density=0.1, random_state=2, format="csr")
    truth = (truth - truth.multiply(train > 0)).tocsr()
    truth.eliminate_zeros()
    eval_users = np.flatnonzero(np.diff(truth.indptr) > 0)
    return users, items, eval_users, train, truth


@pytest.mark.parametrize("batch_size", [1, 7, 50, None])
def test_metrics_do_not_depend_on_batch_size(batch_size):
    users, items, eval_users, train, truth = random_case()
    reference = ev.rank_metrics(users, items, eval_users, train, truth, batch_size=10_000)
    assert ev.rank_metrics(users, items, eval_users, train, truth, batch_size=batch_size) == reference


def test_out_of_memory_halves_the_batch_and_gives_the_same_metrics(monkeypatch):
    users, items, eval_users, train, truth = random_case()
    reference = ev.rank_metrics(users, items, eval_users, train, truth, batch_size=10_000)
    real, seen = ev._batch_metrics, []

    def tight_memory(user_reps, item_reps, batch, *args):
        seen.append(len(batch))
        if len(batch) > 6:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(user_reps, item_reps, batch, *args)

    monkeypatch.setattr(ev, "_batch_metrics", tight_memory)
    with pytest.warns(RuntimeWarning, match="retrying with 4 users per batch"):
        got = ev.rank_metrics(users, items, eval_users, train, truth, batch_size=32)
    assert got == reference
    assert seen[:4] == [32, 16, 8, 4]
    assert max(seen[4:]) == 4


def test_out_of_memory_with_one_user_per_batch_is_raised(monkeypatch):
    users, items, eval_users, train, truth = random_case()

    def no_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(ev, "_batch_metrics", no_memory)
    with pytest.warns(RuntimeWarning), pytest.raises(torch.OutOfMemoryError):
        ev.rank_metrics(users, items, eval_users, train, truth, batch_size=4)


def test_other_runtime_errors_are_not_retried(monkeypatch):
    users, items, eval_users, train, truth = random_case()
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(ev, "_batch_metrics", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        ev.rank_metrics(users, items, eval_users, train, truth, batch_size=8)
    assert len(calls) == 1


def test_auto_batch_size_follows_free_memory(monkeypatch):
    cpu = torch.device("cpu")
    n_items = 100_000  # 1.6 MB per user at 16 bytes per cell
    monkeypatch.setattr(ev, "free_memory_bytes", lambda device: 64 * 2**20)
    assert ev.auto_batch_size(n_items, cpu) == ev.MIN_BATCH  # 16 MB budget -> 10 users -> floor
    monkeypatch.setattr(ev, "free_memory_bytes", lambda device: 2**30)
    assert ev.auto_batch_size(n_items, cpu) == (2**30 // 4) // (n_items * ev.BYTES_PER_CELL)
    monkeypatch.setattr(ev, "free_memory_bytes", lambda device: 2**40)
    assert ev.auto_batch_size(n_items, cpu) == 2048  # CPU cap
    monkeypatch.setattr(ev, "free_memory_bytes", lambda device: None)
    assert ev.auto_batch_size(n_items, cpu) == 2048


def test_free_memory_is_reported_on_cpu():
    free = ev.free_memory_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_every_batch_scores_into_one_buffer(monkeypatch):
    """A fresh batch x items matrix per batch is page-faulted in again each time; the evaluation reuses one."""
    users, items, eval_users, train, truth = random_case()
    reference = ev.rank_metrics(users, items, eval_users, train, truth, batch_size=10_000)
    real, buffers = ev._batch_metrics, []

    def record(user_reps, item_reps, batch, *args):
        buffers.append((args[-1].data_ptr(), tuple(args[-1].shape)))
        return real(user_reps, item_reps, batch, *args)

    monkeypatch.setattr(ev, "_batch_metrics", record)
    assert ev.rank_metrics(users, items, eval_users, train, truth, batch_size=7) == reference
    assert len(buffers) > 2 and len({ptr for ptr, _ in buffers}) == 1
    assert all(shape[1] == items.shape[0] for _, shape in buffers)
