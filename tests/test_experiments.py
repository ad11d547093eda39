"""experiments: the result cache, atomic writes, grid frames, configuration builders, the pilot helper."""
from __future__ import annotations

import pytest

import ckdlab.result
import ckdlab.train
from ckdlab import experiments as ex
from ckdlab.config import TrainConfig
from ckdlab.result import Result


def cfg(**kw) -> TrainConfig:
    base = dict(backbone="VBPR", max_epochs=1, device="cpu", progress=False, batch_size=64)
    return TrainConfig(**{**base, **kw})


def test_second_run_reads_the_cache_without_training(tiny_dataset, tmp_path, monkeypatch):
    first = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path)
    assert not first.extras.get("cached", False)
    assert ex.result_path(cfg(), tiny_dataset, tmp_path).is_file()

    def no_training(*a, **k):
        raise AssertionError("fit must not be called when the result is cached")

    monkeypatch.setattr(ckdlab.train, "fit", no_training)
    second = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path)
    assert second.extras["cached"] is True
    assert second.test == first.test and second.history == first.history
    # progress/device are not part of the identity: still a cache hit
    assert ex.run(cfg(progress=True), tiny_dataset, cache_dir=tmp_path).extras["cached"]


def test_a_different_config_misses_the_cache(tiny_dataset, tmp_path):
    ex.run(cfg(), tiny_dataset, cache_dir=tmp_path)
    assert ex.result_key(cfg(), tiny_dataset) != ex.result_key(cfg(seed=1), tiny_dataset)
    assert not ex.run(cfg(seed=1), tiny_dataset, cache_dir=tmp_path).extras.get("cached", False)


def test_failed_write_leaves_no_partial_file(tiny_dataset, tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckdlab.result.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        ex.run(cfg(), tiny_dataset, cache_dir=tmp_path)
    results = tmp_path / "results"
    assert not results.exists() or list(results.iterdir()) == []
    monkeypatch.undo()
    # the next run trains again and writes a complete, readable file
    again = ex.run(cfg(), tiny_dataset, cache_dir=tmp_path)
    assert not again.extras.get("cached", False)
    assert Result.from_json(ex.result_path(cfg(), tiny_dataset, tmp_path)).test == again.test


def test_use_cache_false_neither_reads_nor_writes(tiny_dataset, tmp_path):
    ex.run(cfg(), tiny_dataset, cache_dir=tmp_path, use_cache=False)
    assert not (tmp_path / "results").exists()


def test_grid_flattens_metrics_and_reuses_the_cache(tiny_dataset, tmp_path):
    configs = ex.seeds_product(cfg(), [0, 1])
    frame = ex.grid(configs, tiny_dataset, tmp_path, progress=False)
    assert len(frame) == 2 and list(frame["seed"]) == [0, 1]
    for col in ("dataset", "backbone", "method", "variant", "seed", "key", "cached", "best_epoch", "epochs_run",
                "sec_per_epoch", "valid_recall@20", "test_recall@20", "test_ndcg@20", "test_precision@20",
                "test_image_recall@20", "test_text_recall@20"):
        assert col in frame.columns, col
    # channels on validation only when asked for (eval_by_modality, off by default: the pilot and dynamics ask)
    assert "valid_image_recall@20" not in frame.columns
    with_channels = ex.grid([configs[0].replace(eval_by_modality=True)], tiny_dataset, tmp_path, progress=False)
    assert {"valid_image_recall@20", "valid_text_recall@20"} <= set(with_channels.columns)
    assert not frame["cached"].any()
    assert ex.cache_status(frame) == "cached runs: 0/2"
    again, results = ex.grid(configs, tiny_dataset, tmp_path, progress=False, return_results=True)
    assert again["cached"].all() and ex.cache_status(again) == "cached runs: 2/2"
    assert ex.cache_status(results) == "cached runs: 2/2"
    assert again["test_recall@20"].tolist() == frame["test_recall@20"].tolist()
    assert [r.test for r in ex.load_results(again, tmp_path)] == [r.test for r in results]


def test_grid_accepts_labels_and_product_specs(tiny_dataset, tmp_path):
    labelled = ex.grid([("a", cfg()), ("b", cfg(seed=1))], tiny_dataset, tmp_path, progress=False)
    assert labelled["variant"].tolist() == ["a", "b"]
    spec = ex.grid({"base": cfg(), "seed": [0, 1], "max_epochs": 1}, tiny_dataset, tmp_path, progress=False)
    assert spec["cached"].all() and spec["seed"].tolist() == [0, 1]
    by_label = ex.grid({"x": [cfg(), cfg(seed=1)]}, tiny_dataset, tmp_path, progress=False)
    assert by_label["variant"].tolist() == ["x", "x"]
    with pytest.raises(TypeError):
        ex.grid([42], tiny_dataset, tmp_path, progress=False)


def test_product_and_seeds_product():
    configs = ex.product(cfg(), method=["none", "ckd"], seed=[0, 1, 2], **{"method.lambda_kd": [0.1]},
                         ablate=("image",))
    assert len(configs) == 6
    assert {c.method for c in configs} == {"none", "ckd"}
    assert all(c.method_params == {"lambda_kd": 0.1} and c.ablate == ("image",) for c in configs)
    assert [c.seed for c in ex.seeds_product([cfg(), cfg(lr=0.01)], [3, 4])] == [3, 4, 3, 4]


def test_make_config_and_shared_identities():
    ckd = ex.make_config("VBPR", "ckd", seed=1, max_epochs=7, teacher_epochs=3, method_params={"ckd": {"tau": 0.2}})
    assert ckd.method_params == {"tau": 0.2, "teacher": {"max_epochs": 3}}
    plain = ex.make_config("VBPR", "none", teacher_epochs=3, method_params={"ckd": {"tau": 0.2}})
    assert plain.method_params == {}
    table = ex.table_configs(["VBPR"], seeds=[0, 1], max_epochs=5, teacher_epochs=2)
    assert [(c.method, c.seed) for c in table] == [(m, s) for m in ex.METHODS for s in (0, 1)]
    ablation = ex.ablation_configs("VBPR", seeds=[0, 1], max_epochs=5, teacher_epochs=2)
    assert len(ablation) == len(ex.ABLATION_VARIANTS) * 2
    full = [c for label, c in ablation if label == "CKD"]
    table_ckd = [c for c in table if c.method == "ckd"]
    # Table 3's full CKD is Table 1's CKD run: same identity, shared cache entry
    assert [c.identity() for c in full] == [c.identity() for c in table_ckd]
    variants = {label: c.method_params for label, c in ablation if c.seed == 0}
    assert variants["w/o generic"]["generic"] is False and variants["w/o re-weight"]["reweight"] == "none"
    assert variants["repl. KL"]["specific"] == "kl" and variants["repl. MSE"]["specific"] == "mse"


def test_pilot_trains_one_unimodal_model_per_modality(tiny_dataset, tmp_path):
    multimodal, unimodal = ex.pilot("VBPR", tiny_dataset, seed=0, max_epochs=2, cache_dir=tmp_path, progress=False,
                                    batch_size=64)
    assert set(unimodal) == set(tiny_dataset.modalities)
    assert multimodal.config["ablate"] == [] or tuple(multimodal.config["ablate"]) == ()
    assert all(set(h["valid_by_modality"]) == set(tiny_dataset.modalities) for h in multimodal.history)
    for m, res in unimodal.items():
        assert tuple(res.config["ablate"]) == tuple(o for o in sorted(tiny_dataset.modalities) if o != m)
    again, again_uni = ex.pilot("VBPR", tiny_dataset, seed=0, max_epochs=2, cache_dir=tmp_path, progress=False,
                                batch_size=64)
    assert ex.cache_status([again, *again_uni.values()]) == "cached runs: 3/3"


def test_result_row_flattens_teachers():
    result = Result(config=cfg(method="ckd").to_dict(), dataset={"name": "d"}, best_epoch=2, epochs_run=3,
                    valid={"recall@20": 0.1}, test={"recall@20": 0.2},
                    valid_by_modality={"image": {"recall@20": 0.05}}, test_by_modality={"image": {"recall@20": 0.06}},
                    timing={"train_seconds_per_epoch": 1.5},
                    extras={"teachers": {"image": {"valid": {"recall@20": 0.07}, "test": {"recall@20": 0.08},
                                                   "best_epoch": 4, "cached": True}}})
    row = ex.result_row(result, key="k", variant="v")
    assert row["test_image_recall@20"] == 0.06 and row["valid_image_recall@20"] == 0.05
    assert row["teacher_test_image_recall@20"] == 0.08 and row["teacher_valid_image_recall@20"] == 0.07
    assert row["teacher_image_best_epoch"] == 4 and row["sec_per_epoch"] == 1.5
    assert row["variant"] == "v" and row["cached"] is False
    assert ex.metric_column("test", "ndcg@20", "text", teacher=True) == "teacher_test_text_ndcg@20"
