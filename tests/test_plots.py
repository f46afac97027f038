"""Plots: the accuracy-against-budget figure with a no-budget panel, the gallery (rows built by
flowtriton.app.evaluation.gallery_rows)."""

from __future__ import annotations

import pytest
import torch

from flowtriton.app.plots import GalleryCell, plot_accuracy_vs_budget, plot_gallery


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


def test_gallery_marks_success_and_draws_flows(tmp_path, monkeypatch):
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
    path = plot_gallery(rows, tmp_path / "g.png", title="2 images", attacks=["flowpgd", "adef"])
    assert path.stat().st_size > 5000
    assert len(titles) == 6  # 2 rows x (original + 2 attacks)
    assert ("flowpgd: FOOLED\npred 3, max 0.80 px", "tab:red") in titles
    assert ("adef: held\npred 7, max 0.00 px", "tab:green") in titles
    with pytest.raises(ValueError, match="empty"):
        plot_gallery([], tmp_path / "x.png")


def test_gallery_rows_feed_the_gallery(tmp_path, monkeypatch):
    """The one row builder: each attack run once on the picked examples, one row per example with a
    cell per attack (named, so the columns need no separate list), at the budgets asked for."""
    import matplotlib.figure

    from flowtriton.attacks import FlowPGD, RotationTranslation
    from flowtriton.app.evaluation import gallery_rows

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    suite = {"flowpgd": FlowPGD.preset("paper", model, eps=0.01, steps=2),
             "rt": RotationTranslation(model, num_rotations=2, num_translations=2)}
    rows = gallery_rows(suite, images, labels, "fgr", [2, 0], budgets={"flowpgd": 0.2})
    assert [row[0] for row in rows] == ["fgr, test image 2 (label 2)", "fgr, test image 0 (label 0)"]
    assert torch.equal(rows[0][1], images[2])
    assert [cell.attack for cell in rows[0][2]] == ["flowpgd", "rt"]
    assert all(cell.caption.startswith("pred ") and isinstance(cell.success, bool) for cell in rows[1][2])
    linf = rows[0][2][0].flow.abs().amax()  # FlowPGD at the gallery's budget 0.2 (normalized): 0.7 px on 8x8
    assert 0.05 < linf <= 0.2 * 3.5 + 1e-4
    single = gallery_rows(suite, images, labels, "std", 1)
    assert len(single) == 1 and single[0][0] == "std, test image 1 (label 1)"

    titles = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (titles.extend(ax.get_title() for ax in fig.axes), save(fig, *a, **k)))
    plot_gallery(rows + single, tmp_path / "g.png")
    assert len(titles) == 9 and titles[0] == "fgr, test image 2 (label 2)"
    assert titles[1].startswith("flowpgd: ") and titles[2].startswith("rt: ")
