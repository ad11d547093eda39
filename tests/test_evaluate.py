"""Full-ranking metrics against brute-force computations on small hand-made cases."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ckdlab.evaluate import metrics_from_hits, rank_metrics


def brute_force(scores: np.ndarray, train: list[set], truth: list[set], k: int) -> dict:
    recall, ndcg, prec = [], [], []
    for u in range(scores.shape[0]):
        order = [i for i in np.argsort(-scores[u], kind="stable") if i not in train[u]][:k]
        hits = [1 if i in truth[u] else 0 for i in order]
        recall.append(sum(hits) / len(truth[u]))
        prec.append(sum(hits) / k)
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(truth[u]), k)))
        ndcg.append(dcg / idcg)
    return {f"recall@{k}": np.mean(recall), f"ndcg@{k}": np.mean(ndcg), f"precision@{k}": np.mean(prec)}


def to_csr(sets: list[set], n_items: int) -> sp.csr_matrix:
    rows = [u for u, s in enumerate(sets) for _ in s]
    cols = [i for s in sets for i in s]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets), n_items))


def test_hand_made_case():
    # one user, items ranked 0 > 1 > 2 > 3 > 4; item 0 is a training item (masked)
    user = torch.tensor([[1.0]])
    items = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    train, truth = [{0}], [{2, 4}]
    m = rank_metrics(user, items, np.array([0]), to_csr(train, 5), to_csr(truth, 5), ks=(2,))
    # ranked list after masking: 1, 2 -> one hit at rank 2
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, d = 17, 23, 4
    u = rng.normal(size=(n_users, d)).astype(np.float32)
    v = rng.normal(size=(n_items, d)).astype(np.float32)
    train = [set(rng.choice(n_items, size=rng.integers(1, 6), replace=False)) for _ in range(n_users)]
    truth = [set(rng.choice(sorted(set(range(n_items)) - t), size=rng.integers(1, 8), replace=False)) for t in train]
    users = np.arange(n_users)
    got = rank_metrics(torch.tensor(u), torch.tensor(v), users, to_csr(train, n_items), to_csr(truth, n_items),
                       ks=(3, 5, 10), batch_size=4)  # batch_size < n_users exercises batching
    for k in (3, 5, 10):
        want = brute_force(u @ v.T, train, truth, k)
        for name, value in want.items():
            assert got[name] == pytest.approx(value, abs=1e-6), name


def test_ndcg_ideal_uses_min_of_relevant_and_k():
    hits = torch.tensor([[1, 1, 0, 0]])
    # 2 relevant items, both at the top: perfect NDCG@4 even though k > |relevant|
    out = metrics_from_hits(hits, torch.tensor([2]), ks=(4,))
    assert float(out["ndcg@4"][0]) == pytest.approx(1.0)
    # 5 relevant items, k = 4: ideal is 4 hits
    out = metrics_from_hits(hits, torch.tensor([5]), ks=(4,))
    ideal = sum(1 / math.log2(r + 2) for r in range(4))
    assert float(out["ndcg@4"][0]) == pytest.approx((1 + 1 / math.log2(3)) / ideal)
