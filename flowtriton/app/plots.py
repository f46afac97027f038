"""Plots (matplotlib, Agg backend, files only): robust accuracy against attack budget, and the
gallery of deformed images with their flow fields (a row per image and model, a column per
attack; :func:`flowtriton.app.evaluation.gallery_rows` builds its rows)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


_LONG_NAMES = {"rt": "rt: rotation+translation"}


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only); ValueError naming the extra to
    install when matplotlib is missing. For scripts that draw their own figures."""
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'flowtriton[app]' (or pass --no-plots)") from None

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt



def plot_accuracy_vs_budget(curves: dict, path: str | Path, title: str = "Robust accuracy",
                            xlabel: str = "budget", fixed: dict | None = None) -> Path:
    """``curves``: {(model label, attack name): (budgets, accuracies)}; one panel per attack,
    one line per model. ``fixed``: {(model label, attack name): accuracy} for attacks without a
    budget (rotation + translation), one bar panel each. Accuracies in [0, 1]. Writes ``path``
    (png/pdf/svg by suffix)."""
    plt = pyplot()
    attacks = sorted({attack for _, attack in curves})
    fixed = fixed or {}
    bar_attacks = sorted({attack for _, attack in fixed})
    if not attacks and not bar_attacks:
        raise ValueError("curves is empty: nothing to plot")
    panels = len(attacks) + len(bar_attacks)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
    for ax, attack in zip(axes[0][len(attacks):], bar_attacks):
        labels = sorted(label for label, name in fixed if name == attack)  # the line panels' colour order
        accs = [fixed[(label, attack)] for label in labels]
        bars = ax.bar(labels, accs, color=[f"C{i}" for i in range(len(labels))])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_title(f"{_LONG_NAMES.get(attack, attack)} (no budget)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3, axis="y")
    for ax, attack in zip(axes[0], attacks):
        for (label, name), (budgets, accs) in sorted(curves.items()):
            if name == attack:
                ax.plot(list(budgets), list(accs), marker="o", label=label)
        ax.set_title(attack)
        ax.set_xlabel(xlabel if isinstance(xlabel, str) else xlabel.get(attack, "budget"))
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, title, path)


def _save(plt, fig, title: str, path: str | Path) -> Path:
    """Title, tight layout, write ``path`` (parents created), close the figure."""
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _as_image(image: torch.Tensor):
    """(C, H, W) in [0, 1] -> an array imshow takes, and its colour map."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] == 1:
        return image[0].numpy(), "gray"
    return image.permute(1, 2, 0).numpy(), None


@dataclass
class GalleryCell:
    """One attack on one image: the deformed image (C, H, W) in [0, 1], its flow (2, H, W) in
    pixels, whether the attack fooled the model, a short caption, and the attack's name (the
    column title when :func:`plot_gallery` is given no ``attacks``)."""

    image: torch.Tensor
    flow: torch.Tensor
    success: bool
    caption: str
    attack: str = ""


def _draw_flow(ax, flow: torch.Tensor, step: int) -> float:
    """Arrows every ``step`` pixels, the longest drawn ``step`` px long (read the true size in
    the caption), none where the flow is under 5% of its longest; returns the longest vector in
    pixels."""
    flow = flow.detach().float().cpu()
    h, w = flow.shape[-2:]
    length = flow.square().sum(0).sqrt()
    longest = float(length.max())
    if longest > 0:
        ys, xs = torch.meshgrid(torch.arange(0, h, step), torch.arange(0, w, step), indexing="ij")
        u, v = flow[0, ::step, ::step], flow[1, ::step, ::step]
        shown = length[::step, ::step] >= 0.05 * longest
        xs, ys, u, v = xs[shown], ys[shown], u[shown], v[shown]
        ax.quiver(xs.numpy(), ys.numpy(), u.numpy(), v.numpy(), color="yellow", angles="xy", scale_units="xy",
                  scale=longest / step, width=0.012, headwidth=3, headlength=3.5, edgecolor="black",
                  linewidth=0.3)
    return longest


def plot_gallery(rows: list, path: str | Path, title: str = "Adversarial deformations",
                 attacks: list | None = None) -> Path:
    """``rows``: [(label, original (C, H, W), [GalleryCell per attack])], as
    :func:`flowtriton.app.evaluation.gallery_rows` builds them; a row per (image, model), the
    original first, then a column per attack: the deformed image with its flow drawn on it (x
    along W, y along H, pointing at where the pixel samples from), framed red when the attack
    fooled the model and green when the model held. ``attacks``: the column names (default: the
    first row's cells' ``attack``). Writes ``path`` (png/pdf/svg by suffix)."""
    plt = pyplot()
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    if attacks is None:
        attacks = [cell.attack for cell in rows[0][2]]
    columns = 1 + len(attacks)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.1 * columns, 2.3 * len(rows)), squeeze=False)
    for (label, original, cells), ax in zip(rows, axes):
        img, cmap = _as_image(original)
        ax[0].imshow(img, cmap=cmap, vmin=0, vmax=1)
        ax[0].set_title(label, fontsize=8)
        for a, name, cell in zip(ax[1:], attacks, cells):
            img, cmap = _as_image(cell.image)
            a.imshow(img, cmap=cmap, vmin=0, vmax=1)
            longest = _draw_flow(a, cell.flow, step=max(1, min(img.shape[:2]) // 9))
            colour = "tab:red" if cell.success else "tab:green"
            verdict = "FOOLED" if cell.success else "held"
            a.set_title(f"{name}: {verdict}\n{cell.caption}, max {longest:.2f} px", fontsize=7, color=colour)
            for spine in a.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    return _save(plt, fig, title, path)
