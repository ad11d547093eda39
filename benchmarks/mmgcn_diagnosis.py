"""Why does MMGCN peak at epoch 1-2 on TikTok? Per-epoch diagnostics and one-change variants.

Validation split only (the test split is never read). Trains ``ckdlab``'s MMGCN with the
trainer's seeding (seed_everything(seed); build; torch.manual_seed(seed + 1); BPRSampler(seed);
Adam), the trainer's step (``backbone_step``: BPR + reg_weight * regularization), and after
every epoch prints valid Recall@20 and diagnostics of the representations:

* ``R20``        valid Recall@20 of the fused model; ``R20_<m>`` of each branch's own output
* ``normPop``    Spearman(item final-representation norm, item training popularity)
* ``scorePop``   mean over 500 valid users of Spearman(user's scores over all items, popularity)
* ``meanPop``    Spearman(score of the mean user, popularity)
* ``top100``     share of the users' top-20 lists (training items masked) in the 100 most popular items
* ``cover``      distinct items in the 500 users' top-20 lists
* ``ucos``       mean pairwise cosine of user reps (1: every user has the same direction)
* ``neg``        fraction of negative entries in the final user / item reps (leaky-ReLU region)
* ``|id|``       mean row norm of the ID embedding (users / items); ``|out|`` of the fused reps
* ``|g h|, |lin|`` mean row norms of gate(h) and lrelu(linear(x)) in the last layer (mean over branches)
* ``cos(out,id)`` mean cosine between a node's fused rep and its ID embedding
* ``|p|``        mean row norm of the user preferences; ``dp`` 1 - cos(p_t, p_{t-1}) (churn per epoch)
* ``bpr``, ``reg``  mean epoch BPR loss and reg_weight * regularization

Variants each change ONE thing (monkeypatches on the built model, the package is not edited)::

    OMP_NUM_THREADS=1 python benchmarks/mmgcn_diagnosis.py --variants baseline,frozen_pref --epochs 12
"""
from __future__ import annotations

import argparse
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from ckdlab.backbones import build_backbone
from ckdlab.backbones._layers import l2_normalize
from ckdlab.backbones.base import Backbone
from ckdlab.balance.base import Batch, backbone_step
from ckdlab.data.samplers import BPRSampler
from ckdlab.evaluate import rank_metrics
from ckdlab.experiments import load_dataset
from ckdlab.modality import ModalityInputs
from ckdlab.train import seed_everything

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiktok"


# -- a branch forward identical to _Branch.forward, with switches and a record of its pieces ------

def branch_forward(self, preference, features, adj, id_embedding):
    """_Branch.forward (checked equal at build), plus ``self.opts`` switches and ``self.rec``."""
    opts = getattr(self, "opts", {})
    lrelu = lambda t: F.leaky_relu(t, self.negative_slope)  # noqa: E731
    x = l2_normalize(torch.cat([preference, self.projection(features)], dim=0))
    n = len(self.conv)
    rec = {}
    for k, (conv, linear, gate) in enumerate(zip(self.conv, self.linear, self.gate)):
        h = lrelu(adj(conv(x)))
        g, lin = gate(h), lrelu(linear(x))
        pre = g + lin + (id_embedding if opts.get("has_id", True) else 0.0)
        last = k == n - 1
        x = pre if (last and opts.get("no_last_lrelu")) else lrelu(pre)
        if last and not torch.is_grad_enabled():
            rec = {"g": g.norm(dim=1).mean().item(), "lin": lin.norm(dim=1).mean().item(),
                   "h_neg": (h < 0).float().mean().item()}
    self.rec = rec
    return x


def released_regularization(self, user_reps, item_reps, users, pos, neg):
    """The released code's reg_embedding_loss: means over elements (ours: sums / 2B)."""
    ut = users.repeat_interleave(2)
    it = torch.stack((pos, neg)).t().reshape(-1) + self.n_users
    reg = (self.id_embedding[ut] ** 2 + self.id_embedding[it] ** 2).mean()
    for b in self.branches.values():
        reg = reg + (b.preference ** 2).mean()
    return reg


VARIANTS = {
    # name: (backbone kwargs, config overrides, patch(model))
    "baseline": ({}, {}, None),
    "frozen_pref": ({}, {}, "frozen_pref"),       # released code: preferences never updated
    "frozen_id": ({}, {}, "frozen_id"),           # released code: ID embeddings never updated
    "frozen_both": ({}, {}, "frozen_both"),       # released code's trainable set (both frozen)
    "no_last_lrelu": ({}, {}, "no_last_lrelu"),   # last layer's outer leaky-ReLU removed
    "no_id": ({}, {}, "no_id"),                   # ID embedding left out of the combination
    "released_reg": ({}, {}, "released_reg"),     # mean-over-elements regulariser
    "pref256": ({"preference_dim": 256}, {}, None),
    "layers3": ({"n_layers": 3}, {}, None),
    "layers1": ({"n_layers": 1}, {}, None),
    "lr1e-3": ({}, {"lr": 1e-3}, None),
    "reg1e-4": ({}, {"reg_weight": 1e-4}, None),
    "reg0": ({}, {"reg_weight": 0.0}, None),
    "reg_final": ({}, {}, "reg_final"),           # L2 of the final representations (Backbone default)
    "standardize": ({}, {"normalize": "standardize"}, None),  # data: features standardised per column
}


def apply_patch(model, patch):
    for b in model.branches.values():
        b.forward = types.MethodType(branch_forward, b)
        b.opts = {}
    if patch in ("frozen_pref", "frozen_both"):
        for b in model.branches.values():
            b.preference.requires_grad_(False)
    if patch in ("frozen_id", "frozen_both"):
        model.id_embedding.requires_grad_(False)
    if patch == "no_last_lrelu":
        for b in model.branches.values():
            b.opts["no_last_lrelu"] = True
    if patch == "no_id":
        for b in model.branches.values():
            b.opts["has_id"] = False
    if patch == "released_reg":
        model.regularization = types.MethodType(released_regularization, model)
    if patch == "reg_final":
        model.regularization = types.MethodType(Backbone.regularization, model)


# -- diagnostics ------------------------------------------------------------------------------------

def ranks(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ranks (ties broken arbitrarily; popularity ties are many, so use average ranks for it)."""
    return torch.argsort(torch.argsort(x, dim=-1), dim=-1).float()


def row_spearman(scores: torch.Tensor, pop_rank: torch.Tensor) -> torch.Tensor:
    r = ranks(scores)
    r = r - r.mean(1, keepdim=True)
    p = pop_rank - pop_rank.mean()
    return (r * p).sum(1) / (r.norm(dim=1) * p.norm())


@torch.no_grad()
def diagnose(model, inputs, data, pop, pop_rank, sample_users, prev_pref):
    model.eval()
    u, i = model(inputs)
    n_u = model.n_users
    out = {}
    valid_users, mask, truth = data.eval_users("valid"), data.train_matrix, data.interaction_matrix("valid")
    out["R20"] = rank_metrics(u, i, valid_users, mask, truth, (20,))["recall@20"]
    recs = {m: b.rec for m, b in model.branches.items()}
    for m, b in model.branches.items():  # each branch's own output as the representation
        pref = model.mean_user_preference(b.preference, inputs, m)
        x = b(pref, inputs[m], model.adj, model.id_embedding)
        out[f"R20_{m}"] = rank_metrics(x[:n_u], x[n_u:], valid_users, mask, truth, (20,))["recall@20"]
    out["normPop"] = spearmanr(i.norm(dim=1).numpy(), pop).statistic
    su = torch.as_tensor(sample_users)
    s = u[su] @ i.T
    out["scorePop"] = row_spearman(s, pop_rank).mean().item()
    out["meanPop"] = spearmanr((u.mean(0) @ i.T).numpy(), pop).statistic
    s_masked = s.clone()
    m = torch.as_tensor(mask[sample_users].toarray(), dtype=torch.bool)
    s_masked[m] = -np.inf
    top = torch.topk(s_masked, 20, dim=1).indices
    top100 = torch.zeros(len(pop), dtype=torch.bool)
    top100[torch.as_tensor(np.argsort(-pop, kind="stable")[:100])] = True
    out["top100"] = top100[top].float().mean().item()
    out["cover"] = int(torch.unique(top).numel())
    un = F.normalize(u, dim=1).mean(0)
    out["ucos"] = (un.norm() ** 2).item()
    out["neg_u"] = (u < 0).float().mean().item()
    out["neg_i"] = (i < 0).float().mean().item()
    idn = model.id_embedding.norm(dim=1)
    out["|id|_u"], out["|id|_i"] = idn[:n_u].mean().item(), idn[n_u:].mean().item()
    out["|out|_u"], out["|out|_i"] = u.norm(dim=1).mean().item(), i.norm(dim=1).mean().item()
    out["|gh|"] = float(np.mean([r["g"] for r in recs.values()]))
    out["|lin|"] = float(np.mean([r["lin"] for r in recs.values()]))
    out["h_neg"] = float(np.mean([r["h_neg"] for r in recs.values()]))
    out["cos(out,id)"] = F.cosine_similarity(torch.cat([u, i]), model.id_embedding, dim=1).mean().item()
    prefs = torch.cat([b.preference for b in model.branches.values()], dim=1)
    out["|p|"] = (torch.stack([b.preference.norm(dim=1) for b in model.branches.values()]).mean()).item()
    out["dp"] = 1 - F.cosine_similarity(prefs, prev_pref, dim=1).mean().item() if prev_pref is not None else 0.0
    model.train()
    return out, prefs.clone()


COLUMNS = ["R20", "R20_audio", "R20_image", "normPop", "scorePop", "meanPop", "top100", "cover", "ucos",
           "neg_u", "neg_i", "|id|_u", "|id|_i", "|out|_u", "|out|_i", "|gh|", "|lin|", "h_neg",
           "cos(out,id)", "|p|", "dp", "bpr", "reg", "s"]


def fmt(v):
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"


def run_variant(name, data, epochs, seed, lr, reg_weight, batch_size):
    kwargs, cfg_over, patch = VARIANTS[name]
    lr, reg_weight = cfg_over.get("lr", lr), cfg_over.get("reg_weight", reg_weight)
    if "normalize" in cfg_over:
        data = load_dataset(data, normalize=cfg_over["normalize"])
    seed_everything(seed)
    model = build_backbone("MMGCN", data, **kwargs)
    inputs = ModalityInputs.from_dataset(data, "cpu")
    with torch.no_grad():  # the traced forward is the package's forward
        ref = [t.clone() for t in model(inputs)]
        apply_patch(model, None)
        new = model(inputs)
        assert all(torch.equal(a, b) for a, b in zip(ref, new)), "traced forward differs from _Branch.forward"
    apply_patch(model, patch)
    torch.manual_seed(seed + 1)
    sampler = BPRSampler(data.train_matrix, seed=seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    pop = np.bincount(data.train[:, 1], minlength=data.n_items).astype(np.float64)
    pop_rank = torch.as_tensor(spearman_ranks(pop), dtype=torch.float32)
    rng = np.random.default_rng(123)
    valid_users = data.eval_users("valid")
    sample_users = np.sort(rng.choice(valid_users, size=min(500, len(valid_users)), replace=False))
    print(f"\n## {name}: lr {lr:g}, reg_weight {reg_weight:g}, kwargs {kwargs}, patch {patch}", flush=True)
    print("| epoch | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 1))
    d, prev = diagnose(model, inputs, data, pop, pop_rank, sample_users, None)
    print("| 0 | " + " | ".join(fmt(d.get(c, 0.0)) for c in COLUMNS) + " |", flush=True)
    best = (d["R20"], 0)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        bprs, regs = [], []
        for users, pos, neg in sampler.epoch(batch_size):
            batch = Batch(*(torch.as_tensor(a, dtype=torch.long) for a in (users, pos, neg)))
            with model.step_scope():
                loss, _, _, margin = backbone_step(model, inputs, batch, reg_weight)
            bpr = -F.logsigmoid(margin).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bprs.append(bpr.item())
            regs.append(loss.item() - bpr.item())
        d, prev = diagnose(model, inputs, data, pop, pop_rank, sample_users, prev)
        d.update(bpr=float(np.mean(bprs)), reg=float(np.mean(regs)), s=time.perf_counter() - t0)
        best = max(best, (d["R20"], epoch))
        print(f"| {epoch} | " + " | ".join(fmt(d[c]) for c in COLUMNS) + " |", flush=True)
    print(f"{name}: best valid R@20 {best[0]:.4f} at epoch {best[1]}", flush=True)
    return best


def spearman_ranks(x):
    from scipy.stats import rankdata
    return rankdata(x)  # average ranks (popularity has many ties)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--variants", default="baseline")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--reg-weight", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=2048)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.data)
    pop = np.bincount(data.train[:, 1], minlength=data.n_items).astype(np.float32)
    pr = rank_metrics(torch.ones(data.n_users, 1), torch.as_tensor(pop).unsqueeze(1), data.eval_users("valid"),
                      data.train_matrix, data.interaction_matrix("valid"), (20,))["recall@20"]
    print(f"Pop valid R@20 {pr:.4f}")
    summary = []
    for name in args.variants.split(","):
        summary.append((name, *run_variant(name, data, args.epochs, args.seed, args.lr, args.reg_weight,
                                           args.batch_size)))
    print("\n| variant | best valid R@20 | best epoch |\n|---|---|---|")
    for name, r, e in summary:
        print(f"| {name} | {r:.4f} | {e} |")


if __name__ == "__main__":
    main()
