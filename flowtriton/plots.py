"""Plots (matplotlib, Agg backend, files only): robust accuracy against attack budget, and a
gallery of original / deformed image / flow field for each attack."""

from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_budget(curves: dict, path: str | Path, title: str = "Robust accuracy",
                            xlabel: str = "budget") -> Path:
    """``curves``: {(model label, attack name): (budgets, accuracies)}; one panel per attack,
    one line per model. Accuracies in [0, 1]. Writes ``path`` (png/pdf/svg by suffix)."""
    plt = _pyplot()
    attacks = sorted({attack for _, attack in curves})
    if not attacks:
        raise ValueError("curves is empty: nothing to plot")
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 3.4), squeeze=False)
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


def plot_gallery(rows: list, path: str | Path, title: str = "Adversarial deformations") -> Path:
    """``rows``: [(label, original (C,H,W), deformed (C,H,W), flow (2,H,W) in pixels, caption)].
    One row per entry: original, deformed image, and the flow as arrows (quiver; x along W, y
    along H; the y axis points down as in the image, so an arrow points at where the pixel samples from)."""
    plt = _pyplot()
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)), squeeze=False)
    for (label, original, deformed, flow, caption), ax in zip(rows, axes):
        img, cmap = _as_image(original)
        ax[0].imshow(img, cmap=cmap, vmin=0, vmax=1)
        ax[0].set_title(f"{label}: original", fontsize=8)
        img, cmap = _as_image(deformed)
        ax[1].imshow(img, cmap=cmap, vmin=0, vmax=1)
        ax[1].set_title(caption, fontsize=8)
        flow = flow.detach().float().cpu()
        h, w = flow.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ax[2].imshow(img, cmap=cmap, vmin=0, vmax=1, alpha=0.35)
        longest = float(flow.square().sum(0).sqrt().max())
        if longest > 0:  # arrows drawn 1.5 px long at the longest vector; the title gives the true size
            ax[2].quiver(xs.numpy(), ys.numpy(), flow[0].numpy(), flow[1].numpy(), color="tab:red",
                         angles="xy", scale_units="xy", scale=longest / 1.5, width=0.006)
        ax[2].set_title(f"flow (longest {longest:.2f} px)", fontsize=8)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    return _save(plt, fig, title, path)
