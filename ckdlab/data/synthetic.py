"""The built-in synthetic dataset: planted tastes, long-tail popularity, imbalanced modalities.

What it plants
--------------
* **Latent tastes.** Every item has a latent vector ``v_i`` in ``n_factors``
  dimensions, drawn around one of ``n_categories`` category centres (the
  category becomes ``item_category``); every user has a Gaussian taste ``u_u``.
* **Interactions.** User ``u`` picks items without replacement from a softmax
  over ``taste_strength * u_u . v_i / sqrt(n_factors) + log pop_i``, where
  ``pop_i`` is a Zipf popularity (``rank ** -popularity_exponent``, ranks
  shuffled over items). Sampling is a vectorised Gumbel top-k. The number of
  interactions per user is over-dispersed (gamma-Poisson) with mean about
  ``mean_interactions`` and at least ``min_interactions``. Some unpopular items
  may end up with no interaction at all, as in real data.
* **Modalities.** Each modality ``m`` with ``(dim, strength)`` is a nonlinear
  view of the item's latent vector: ``strength * standardise(tanh(gain * (v_i *
  visibility_m) @ P_m)) + N(0, 1)`` noise, with a fixed random projection
  ``P_m`` into ``dim`` columns. ``strength`` is a per-column signal-to-noise
  ratio. Latent factors are dealt round-robin to the modalities; a modality sees
  its own factors fully and the others damped by ``1 - complementarity``. So the
  modalities are partly complementary: each carries some taste directions better
  than the other, and a model that combines them can beat either alone.
* **Splits.** Each user's items are shuffled and split about 80/10/10 into
  train/valid/test (rounded half up; a user always keeps at least one training
  item; users with few items keep their remainder in train).

What to expect
--------------
With the defaults (``text`` strong, ``image`` weak, as on Amazon data where text
beats visual features) a content-only recommender (user profile = mean of the
user's training-item features, rank by cosine, training items masked) reaches a
test Recall@20 of about 0.13-0.14 with ``text``, 0.06-0.07 with ``image`` and
0.012-0.02 with random features (seeds 0-4); concatenating both modalities
(0.14-0.17) beats ``text`` alone. The 10% most popular items hold about 42% of
the training interactions. ``tests/test_data_synthetic.py`` checks the ordering.
Generation takes about 0.3 s; one epoch of a simple model over the ~47k
training interactions takes well under a second on a CPU.

The generator is deterministic given ``seed``. Interactions, tastes and each
modality draw from their own random streams, so changing e.g. a modality's
strength leaves the interactions unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .dataset import Dataset


def _default_modalities() -> dict[str, tuple[int, float]]:
    return {"text": (64, 1.0), "image": (96, 0.35)}


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of :func:`generate_synthetic`.

    Attributes
    ----------
    n_users, n_items : int
        Dataset size.
    n_factors : int
        Dimension of the latent tastes.
    mean_interactions : float
        Average number of interactions per user (before splitting).
    min_interactions : int
        Fewest interactions a user gets (5 mimics 5-core data).
    popularity_exponent : float
        Zipf exponent of item popularity; 0 = no popularity skew.
    taste_strength : float
        Weight of the user-item affinity against log-popularity in the softmax;
        higher = more personalised, less popularity-driven.
    n_categories : int
        Number of item categories (latent clusters); 0 = no ``item_category``.
    category_strength : float
        Share (0..1) of an item's latent variance explained by its category.
    modalities : dict of str to (int, float)
        ``name -> (dim, strength)``; strength is the per-column signal-to-noise
        ratio of that modality's features. Order is the dataset's modality order.
    complementarity : float
        0 = every modality sees all latent factors equally; 1 = each modality sees
        only its own share of the factors.
    nonlinearity : float
        Gain inside the ``tanh`` of the feature map (near 0 = almost linear).
    valid_fraction, test_fraction : float
        Per-user share of items put in the validation and test splits.
    seed : int
        Seed of every random stream.
    name : str
        Dataset name.
    """

    n_users: int = 2000
    n_items: int = 1500
    n_factors: int = 16
    mean_interactions: float = 30.0
    min_interactions: int = 5
    popularity_exponent: float = 1.0
    taste_strength: float = 3.0
    n_categories: int = 12
    category_strength: float = 0.4
    modalities: dict = field(default_factory=_default_modalities)
    complementarity: float = 0.7
    nonlinearity: float = 1.0
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    name: str = "synthetic"

    def __post_init__(self):
        if self.n_users < 1 or self.n_items < 2 or self.n_factors < 1:
            raise ValueError("n_users >= 1, n_items >= 2 and n_factors >= 1 are required")
        if not 1 <= self.min_interactions <= self.mean_interactions < self.n_items:
            raise ValueError("need 1 <= min_interactions <= mean_interactions < n_items")
        if not self.modalities:
            raise ValueError("at least one modality is required")
        for m, spec in self.modalities.items():
            if len(spec) != 2 or int(spec[0]) < 1 or float(spec[1]) < 0:
                raise ValueError(f"modality {m!r}: expected (dim >= 1, strength >= 0), got {spec!r}")
        if not (0 <= self.complementarity <= 1 and 0 <= self.category_strength <= 1):
            raise ValueError("complementarity and category_strength must lie in [0, 1]")
        if not (0 <= self.valid_fraction and 0 <= self.test_fraction and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("valid_fraction and test_fraction must be >= 0 and sum to < 1")


# ------------------------------------------------------------- latent model

def _item_latents(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance item latents around category centres, and the categories."""
    k = cfg.n_factors
    noise = rng.standard_normal((cfg.n_items, k))
    if cfg.n_categories <= 0:
        return noise, np.zeros(0, dtype=np.int64)
    category = rng.integers(cfg.n_categories, size=cfg.n_items)
    centres = rng.standard_normal((cfg.n_categories, k))
    rho = cfg.category_strength
    return np.sqrt(rho) * centres[category] + np.sqrt(1 - rho) * noise, category.astype(np.int64)


def _log_popularity(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Zipf log-popularity with the ranks shuffled over items."""
    ranks = rng.permutation(cfg.n_items) + 1
    return -cfg.popularity_exponent * np.log(ranks)


def _interaction_counts(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Over-dispersed (gamma-Poisson) interactions per user, at least ``min_interactions``."""
    shape = 1.5
    extra = cfg.mean_interactions - cfg.min_interactions
    lam = rng.gamma(shape, extra / shape, size=cfg.n_users) if extra > 0 else np.zeros(cfg.n_users)
    cap = max(cfg.min_interactions, cfg.n_items // 2)
    return np.minimum(cfg.min_interactions + rng.poisson(lam), cap).astype(np.int64)


def _sample_interactions(cfg: SyntheticConfig, users: np.ndarray, items: np.ndarray, log_pop: np.ndarray,
                         counts: np.ndarray, rng: np.random.Generator, block: int = 1024) -> np.ndarray:
    """Per user, ``counts[u]`` distinct items by Gumbel top-k; ``(n, 2)`` pairs, user-major.

    Users are processed in blocks so memory stays ``block x n_items``.
    """
    scale = cfg.taste_strength / np.sqrt(cfg.n_factors)
    kmax = int(counts.max())
    chunks = []
    for start in range(0, cfg.n_users, block):
        stop = min(start + block, cfg.n_users)
        logits = scale * (users[start:stop] @ items.T) + log_pop
        keys = logits + rng.gumbel(size=logits.shape)
        # The top-k of logits + Gumbel noise is a sample without replacement from the softmax.
        top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
        take = np.arange(kmax) < counts[start:stop, None]
        rows = np.broadcast_to(np.arange(start, stop)[:, None], top.shape)
        chunks.append(np.stack([rows[take], top[take]], axis=1))
    return np.concatenate(chunks).astype(np.int64)


def _split(cfg: SyntheticConfig, pairs: np.ndarray, counts: np.ndarray,
           rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random per-user 80/10/10 split; each split sorted by (user, item)."""
    users = pairs[:, 0]
    # Random position of each interaction within its user's list.
    order = np.lexsort((rng.random(len(pairs)), users))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.empty(len(pairs), dtype=np.int64)
    position[order] = np.arange(len(pairs)) - np.repeat(starts, counts)
    n = counts[users]
    n_test = np.floor(cfg.test_fraction * n + 0.5).astype(np.int64)
    n_valid = np.floor(cfg.valid_fraction * n + 0.5).astype(np.int64)
    # Users with few items keep at least one training item: shrink valid first, then test.
    n_test = np.minimum(n_test, n - 1)
    n_valid = np.minimum(n_valid, n - 1 - n_test)
    code = np.where(position < n_test, 2, np.where(position < n_test + n_valid, 1, 0))
    out = {}
    for c, s in enumerate(("train", "valid", "test")):
        part = pairs[code == c]
        out[s] = np.ascontiguousarray(part[np.lexsort((part[:, 1], part[:, 0]))])
    return out


# --------------------------------------------------------------- modalities

def _visibility(cfg: SyntheticConfig, index: int) -> np.ndarray:
    """Per-factor weight with which modality number ``index`` sees the latent factors."""
    owner = np.arange(cfg.n_factors) % len(cfg.modalities)
    return np.where(owner == index, 1.0, 1.0 - cfg.complementarity)


def _modality_features(cfg: SyntheticConfig, items: np.ndarray, index: int, dim: int, strength: float,
                       rng: np.random.Generator) -> np.ndarray:
    """One modality: a noisy nonlinear projection of the visible part of the item latents."""
    projection = rng.standard_normal((cfg.n_factors, dim)) / np.sqrt(cfg.n_factors)
    signal = np.tanh(cfg.nonlinearity * (items * _visibility(cfg, index)) @ projection)
    signal = (signal - signal.mean(0)) / (signal.std(0) + 1e-12)
    features = strength * signal + rng.standard_normal((cfg.n_items, dim))
    return features.astype(np.float32)


# ------------------------------------------------------------------- public

def generate_synthetic(config: SyntheticConfig | None = None, **overrides) -> Dataset:
    """Generate the synthetic dataset described in the module docstring.

    Parameters
    ----------
    config : SyntheticConfig, optional
        Full configuration; the defaults when omitted.
    **overrides
        Field overrides applied on top of ``config`` (``n_users=500, seed=1``).

    Returns
    -------
    Dataset
        ``notes["config"]`` holds the configuration used.
    """
    cfg = replace(config or SyntheticConfig(), **overrides)
    streams = np.random.SeedSequence(cfg.seed).spawn(4 + len(cfg.modalities))
    rng_items, rng_users, rng_sample, rng_split = (np.random.default_rng(s) for s in streams[:4])

    items, category = _item_latents(cfg, rng_items)
    log_pop = _log_popularity(cfg, rng_items)
    users = rng_users.standard_normal((cfg.n_users, cfg.n_factors))
    counts = _interaction_counts(cfg, rng_users)
    pairs = _sample_interactions(cfg, users, items, log_pop, counts, rng_sample)
    splits = _split(cfg, pairs, counts, rng_split)

    features = {
        m: _modality_features(cfg, items, idx, int(dim), float(strength), np.random.default_rng(streams[4 + idx]))
        for idx, (m, (dim, strength)) in enumerate(cfg.modalities.items())
    }
    config_note = {**asdict(cfg), "modalities": {m: list(v) for m, v in cfg.modalities.items()}}
    return Dataset(cfg.name, cfg.n_users, cfg.n_items, splits["train"], splits["valid"], splits["test"], features,
                   source=f"synthetic(seed={cfg.seed})", item_category=category if cfg.n_categories > 0 else None,
                   notes={"config": config_note})
