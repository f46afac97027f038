"""Plots: the accuracy-against-budget figure with a no-budget panel, the attack grid gallery."""

from __future__ import annotations

import pytest
import torch

from flowtriton.plots import GalleryCell, plot_accuracy_vs_budget, plot_attack_grid


def test_budget_plot_has_a_panel_for_attacks_without_budget(tmp_path, monkeypatch):
    import matplotlib.figure

    panels = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (panels.append([ax.get_title() for ax in fig.axes]), save(fig, *a, **k)))
    curves = {("standard", "flowpgd"): ([0, 0.01], [0.9, 0.5]), ("fgr", "flowpgd"): ([0, 0.01], [0.88, 0.7])}
    path = plot_accuracy_vs_budget(curves, tmp_path / "b.png", fixed={("standard", "rt"): 0.05, ("fgr", "rt"): 0.07})
    assert path.stat().st_size > 5000
    assert panels == [["flowpgd", "rt: rotation+translation (no budget)"]]
    with pytest.raises(ValueError, match="empty"):
        plot_accuracy_vs_budget({}, tmp_path / "c.png")


def test_attack_grid_marks_success_and_draws_flows(tmp_path, monkeypatch):
    import matplotlib.figure

    titles = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (titles.extend((ax.get_title(), ax.title.get_color()) for ax in fig.axes),
                                              save(fig, *a, **k)))
    image = torch.rand(1, 12, 12)
    flow = torch.zeros(2, 12, 12)
    flow[0, 4:8, 4:8] = 0.8
    rows = [(f"model {k}", image, [GalleryCell(image, flow, True, "pred 3"), GalleryCell(image, flow * 0, False,
                                                                                      "pred 7")])
            for k in range(2)]
    path = plot_attack_grid(rows, ["flowpgd", "adef"], tmp_path / "g.png", title="2 images")
    assert path.stat().st_size > 5000
    assert len(titles) == 6  # 2 rows x (original + 2 attacks)
    assert ("flowpgd: FOOLED\npred 3, max 0.80 px", "tab:red") in titles
    assert ("adef: held\npred 7, max 0.00 px", "tab:green") in titles
    with pytest.raises(ValueError, match="empty"):
        plot_attack_grid([], ["flowpgd"], tmp_path / "x.png")
