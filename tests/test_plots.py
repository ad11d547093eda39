"""plots: figures build from small fake Results and are written as PNG and SVG."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ckdlab import plots  # noqa: E402
from ckdlab.result import Result  # noqa: E402

MODS = ("text", "image")


def fake_result(epochs: int, level: float, by_modality: bool = True, ckd: bool = False, **extra) -> Result:
    history = []
    for e in range(1, epochs + 1):
        h = {"epoch": e, "loss": 1.0 / e, "valid": {"recall@20": level * e / epochs}, "seconds": 0.1,
             "valid_by_modality": ({m: {"recall@20": level * (0.8 if m == "text" else 0.5) * e / epochs}
                                    for m in MODS} if by_modality else {})}
        if ckd:
            h["rho"] = {"text": 0.1 * e, "image": 0.05 * e}
            h["lambda"] = {"text": 0.4, "image": 0.6}
        history.append(h)
    extras = dict(extra)
    if ckd:
        extras["trace"] = [{"step": s, "epoch": (s - 1) // 4 + 1, "rho": {"text": 0.02 * s, "image": 0.01 * s},
                            "lambda": {"text": 0.45, "image": 0.55}} for s in range(2, 4 * epochs + 1, 2)]
        extras["teachers"] = {m: {"valid": {"recall@20": 0.3}, "test": {"recall@20": 0.3}, "best_epoch": 3,
                                  "cached": False} for m in MODS}
    return Result(config={"backbone": "VBPR", "method": "ckd" if ckd else "none", "batch_size": 100},
                  dataset={"name": "fake", "interactions": {"train": 400}, "modalities": {m: 4 for m in MODS}},
                  best_epoch=epochs - 1, epochs_run=epochs, valid={"recall@20": level}, test={"recall@20": level},
                  history=history, extras=extras)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_pilot_figure_draws_every_curve_to_its_own_length():
    mm = fake_result(8, 0.3)
    uni = {"text": fake_result(5, 0.32, by_modality=False), "image": fake_result(10, 0.2, by_modality=False)}
    fig = plots.pilot_figure(mm, uni)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"multimodal model", "text-only model", "text channel of multimodal", "image-only model",
                          "image channel of multimodal"}
    assert lines["text-only model"].get_xdata()[-1] == 5  # ends where its run ended
    assert lines["image-only model"].get_xdata()[-1] == 10
    assert lines["text channel of multimodal"].get_linestyle() == "--"
    assert lines["text-only model"].get_color() == lines["text channel of multimodal"].get_color()
    assert ax.get_xlabel() == "epoch" and "Recall@20" in ax.get_ylabel()
    assert len(ax.collections) == 2  # one shaded gap per modality
    assert fig.legends  # legend below the axes


def test_pilot_figure_accepts_dicts_and_an_axes():
    fig, ax = plt.subplots()
    mm = fake_result(4, 0.3).to_dict()
    out = plots.pilot_figure(mm, {m: fake_result(4, 0.2, by_modality=False).to_dict() for m in MODS}, ax=ax)
    assert out is fig and ax.get_legend() is not None


def test_dynamics_figure_panels():
    fig = plots.dynamics_figure(fake_result(6, 0.3, ckd=True))
    a, b, c = fig.axes[:3]
    assert "ρ" in a.get_ylabel() and "λ" in b.get_ylabel() and "Recall@20" in c.get_ylabel()
    assert all(ax.get_xlabel() == "epoch" for ax in (a, b, c))
    # per-epoch means at the middle of each epoch, the trace in fractional epochs
    xs = sorted(x for line in a.get_lines() for x in line.get_xdata())
    assert 0.5 in xs and pytest.approx(0.5) == min(x for x in xs if x > 0.4)
    assert any(line.get_linestyle() == ":" for line in c.get_lines())  # teacher levels


def test_save_figure_writes_png_and_svg(tmp_path):
    fig = plots.pilot_figure(fake_result(3, 0.3), {m: fake_result(3, 0.2, by_modality=False) for m in MODS})
    paths = plots.save_figure(fig, "pilot", tmp_path / "figs")
    assert [p.name for p in paths] == ["pilot.png", "pilot.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()
    assert plots.save_figure(fig, "pilot", None) == []
