"""Full-ranking evaluation: Recall, NDCG and Precision @K over the whole catalogue.

Every user's training items are masked; metrics are averaged over the split's
evaluation users (those with at least one training interaction, see
``Dataset.eval_users``). Users are processed in batches so memory stays
bounded on large catalogues: the batch size follows the device's free memory
(:func:`auto_batch_size`), and a CUDA out-of-memory error halves it and retries
the batch instead of failing the run.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from .gather import rows
from .modality import ModalityInputs

DEFAULT_KS = (10, 20, 50)

#: Bytes one (user, item) cell of a batch costs: float scores, boolean train mask and
#: truth mask, top-k workspace, with headroom for allocator slack.
BYTES_PER_CELL = 16
#: Share of the free memory one evaluation batch may take.
MEMORY_FRACTION = 0.25
#: Batch size limits: below MIN the per-batch overhead dominates; above MAX nothing is gained.
MIN_BATCH, MAX_BATCH = 16, 8192


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes (CUDA: the driver's figure; CPU: MemAvailable), or None if unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def auto_batch_size(n_items: int, device: torch.device, cap: int = 2048) -> int:
    """Users per evaluation batch so one batch's score matrix fits a fraction of the free memory.

    ``cap`` bounds it from above (on CPU larger batches are not faster); on CUDA the
    cap is :data:`MAX_BATCH`, since wide batches keep the GPU busy.
    """
    free = free_memory_bytes(device)
    upper = MAX_BATCH if device.type == "cuda" else cap
    if free is None:
        return min(cap, upper)
    fits = int(free * MEMORY_FRACTION) // max(n_items * BYTES_PER_CELL, 1)
    return int(max(MIN_BATCH, min(upper, fits)))


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


class _RowIndex:
    """A CSR matrix's structure as torch tensors, for vectorised row gathers on any device."""

    def __init__(self, matrix: sp.csr_matrix, device):
        self.indptr = torch.as_tensor(matrix.indptr, dtype=torch.long, device=device)
        self.indices = torch.as_tensor(matrix.indices, dtype=torch.long, device=device)

    def coordinates(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(row_of, cols, counts)``: the non-zeros of the given rows as (position in ``rows``, column)
        pairs, and the number per row."""
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        total = int(counts.sum())
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
        first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        positions = torch.repeat_interleave(starts, counts) + torch.arange(total, device=rows.device) - first
        return row_of, self.indices[positions], counts


def metrics_from_hits(hits: torch.Tensor, n_relevant: torch.Tensor, ks=DEFAULT_KS) -> dict[str, torch.Tensor]:
    """Per-user metrics from a (users, max_k) 0/1 hit matrix of ranked lists.

    NDCG uses the standard ideal DCG over ``min(n_relevant, k)`` positions.
    """
    hits = hits.float()
    max_k = hits.shape[1]
    discounts = 1.0 / torch.log2(torch.arange(2, max_k + 2, device=hits.device, dtype=torch.float32))
    ideal_cum = torch.cumsum(discounts, 0)
    n_rel = n_relevant.float().clamp(min=1)
    out = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1)
        out[f"recall@{k}"] = n_hit / n_rel
        out[f"precision@{k}"] = n_hit / k
        idcg = ideal_cum[(torch.clamp(n_relevant, max=k).long() - 1).clamp(min=0)]
        out[f"ndcg@{k}"] = (h * discounts[:k]).sum(1) / idcg
    return out


def rank_metrics(user_reps: torch.Tensor, item_reps: torch.Tensor, users: np.ndarray,
                 mask_matrix: sp.csr_matrix, truth_matrix: sp.csr_matrix, ks=DEFAULT_KS,
                 batch_size: int | None = None, per_user: bool = False) -> dict:
    """Full-ranking metrics of the scores ``user_reps @ item_reps.T``.

    Parameters
    ----------
    users : np.ndarray
        Users to evaluate (each must have at least one item in ``truth_matrix``).
    mask_matrix : csr_matrix
        Items never to rank per user (their training items).
    truth_matrix : csr_matrix
        Held-out relevant items per user.
    batch_size : int, optional
        Users per batch; default :func:`auto_batch_size`. A CUDA out-of-memory error
        halves it and retries the same batch (down to one user); the metrics do
        not depend on the batch size.
    per_user : bool
        Also return the per-user values (``{"metric": np.ndarray}`` under ``"per_user"``).
    """
    ks = tuple(sorted(ks))
    max_k = min(max(ks), item_reps.shape[0])
    collected: dict[str, list] = {}
    device = user_reps.device
    masked, relevant = _RowIndex(mask_matrix, device), _RowIndex(truth_matrix, device)
    users_t = torch.as_tensor(users, dtype=torch.long, device=device)
    size = int(batch_size) if batch_size else auto_batch_size(item_reps.shape[0], device)
    # one score buffer for every batch (batches only shrink; an out-of-memory retry drops it): a fresh
    # batch x items matrix per batch would be faulted in again each time
    scores = None
    start = 0
    while start < len(users):
        batch = users_t[start:start + size]
        try:
            if scores is None:
                scores = torch.empty((len(batch), item_reps.shape[0]), device=device,
                                     dtype=torch.promote_types(user_reps.dtype, item_reps.dtype))
            batch_values = _batch_metrics(user_reps, item_reps, batch, masked, relevant, max_k, ks,
                                          scores[:len(batch)])
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc) or size == 1:
                raise
            size, scores = max(1, size // 2), None
            warnings.warn(f"evaluation ran out of memory on {device}; retrying with {size} users per batch",
                          RuntimeWarning, stacklevel=2)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        for name, v in batch_values.items():
            collected.setdefault(name, []).append(v.cpu().numpy())
        start += len(batch)
    # one float64 sum over all users: the metrics do not depend on how users were batched
    values = {name: np.concatenate(parts) for name, parts in collected.items()}
    n = max(len(users), 1)
    result = {name: float(values[name].astype(np.float64).sum()) / n if name in values else 0.0
              for name in _metric_names(ks)}
    if per_user:
        result["per_user"] = {k: values.get(k, np.zeros(0)) for k in _metric_names(ks)}
    return result


def _batch_metrics(user_reps, item_reps, batch, masked: _RowIndex, relevant: _RowIndex, max_k: int, ks,
                   scores: torch.Tensor):
    """Per-user metrics of one batch of users (the memory-heavy part: a batch x items score matrix,
    written into ``scores``, a buffer of that shape whose content is overwritten).

    Beyond the floor (the product and top-k) it touches only the sparse entries: the training
    items are set to -inf in place, and the hits are found among the top-k by their (row, item)
    keys, with no dense batch x items mask.
    """
    with torch.no_grad():  # metrics only; ``out=`` takes no part in autograd
        torch.matmul(rows(user_reps, batch), item_reps.T, out=scores)
    row_of, cols, _ = masked.coordinates(batch)
    scores[row_of, cols] = float("-inf")
    top = torch.topk(scores, max_k, dim=1).indices
    n_items = item_reps.shape[0]
    row_of, cols, n_relevant = relevant.coordinates(batch)
    truth_keys = row_of * n_items + cols
    top_keys = torch.arange(len(batch), device=top.device).unsqueeze(1) * n_items + top
    hits = torch.isin(top_keys, truth_keys)
    return metrics_from_hits(hits, n_relevant, ks)


def _metric_names(ks) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "precision")]


@torch.no_grad()
def representations(model, inputs: ModalityInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """User and item representations in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return model(inputs)
    finally:
        model.train(was_training)


def evaluate(model, inputs: ModalityInputs, dataset, split: str = "valid", ks=DEFAULT_KS,
             batch_size: int | None = None) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``split`` with the given (possibly ablated) inputs."""
    user_reps, item_reps = representations(model, inputs)
    return rank_metrics(user_reps, item_reps, dataset.eval_users(split), dataset.train_matrix,
                        dataset.interaction_matrix(split), ks, batch_size)


def evaluate_by_modality(model, inputs: ModalityInputs, dataset, split: str = "valid", ks=DEFAULT_KS,
                         batch_size: int | None = None) -> dict[str, dict[str, float]]:
    """Metrics of each uni-modal channel: the model with every other modality mean-ablated."""
    return {m: evaluate(model, inputs.only(m), dataset, split, ks, batch_size) for m in inputs.names}
