"""VBPR's training floor: the bare tensor operations one BPR step of VBPR needs, forward and backward.

What a step must do, written with nothing else: gather the batch's user rows
(ID part and one preference per modality), gather the batch's item rows and
*only their* features, project those with each modality's matrix (the content
bias as one extra output column), score the positive and negative items, BPR
plus L2 on the gathered rows, backward, one fused Adam update of every
parameter. No module structure, no full-catalogue projection, no
concatenated representation tables. ``ckdlab bench`` reports VBPR's step time
over this floor (``step_over_floor``); the number is only meaningful as that ratio,
measured in the same process on the same batches.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def vbpr_floor_step_seconds(dataset, device, *, batch_size: int = 2048, embedding_dim: int = 64,
                            reg_weight: float = 1e-4, steps: int = 20, seed: int = 0) -> float:
    """Best-of-3 mean seconds per step of the bare VBPR step on ``dataset``'s sizes and features."""
    g = torch.Generator().manual_seed(seed)
    d, mods = embedding_dim, list(dataset.features)
    n_users, n_items = int(dataset.n_users), int(dataset.n_items)

    def param(*shape, zero=False):
        t = torch.zeros(*shape) if zero else torch.randn(*shape, generator=g) * 0.01
        return t.to(device).requires_grad_()

    users_table = param(n_users, d * (1 + len(mods)))          # [x_u ; p_u^m ...]
    item_id, item_bias = param(n_items, d), param(n_items, zero=True)
    weight = {m: param(int(f.shape[1]), d + 1) for m, f in dataset.features.items()}  # [W_m ; beta'_m]
    bias = {m: param(d + 1, zero=True) for m in mods}
    features = {m: torch.as_tensor(f, dtype=torch.float32, device=device) for m, f in dataset.features.items()}
    optimizer = torch.optim.Adam([users_table, item_id, item_bias, *weight.values(), *bias.values()], lr=1e-3,
                                 fused=True)
    train = dataset.train
    rows = torch.randint(0, len(train), (steps, batch_size), generator=g)
    batches = [(torch.as_tensor(train[:, 0][r.numpy()], device=device),
                torch.as_tensor(train[:, 1][r.numpy()], device=device),
                torch.randint(0, n_items, (batch_size,), generator=g).to(device)) for r in rows]

    def step(users, pos, neg):
        items = torch.cat([pos, neg])
        u = users_table[users]
        score = (u[:, :d].repeat(2, 1) * item_id[items]).sum(1) + item_bias[items]
        u2 = u.repeat(2, 1)
        for k, m in enumerate(mods):
            projected = torch.addmm(bias[m], features[m][items], weight[m])
            score = score + (u2[:, d * (k + 1): d * (k + 2)] * projected[:, :d]).sum(1) + projected[:, d]
        margin = score[:batch_size] - score[batch_size:]
        reg = (u.pow(2).sum() + item_id[items].pow(2).sum()) / (2 * batch_size)
        loss = -F.logsigmoid(margin).mean() + reg_weight * reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed() -> float:
        t0 = time.perf_counter()
        for b in batches:
            step(*b)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / len(batches)

    timed()  # warm-up
    return min(timed() for _ in range(3))
