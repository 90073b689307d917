"""Plots for the notebooks: learning curves from run records, concept patches on images."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


def plot_learning_curves(history, metric: str = "top1", split: str = "test", ax=None):
    """Test accuracy per epoch, one line per (method, head), one panel per sample rate."""
    import seaborn as sns

    df = history[history["split"] == split].copy()
    df["curve"] = df["method"] + " / " + df["head"]
    rates = sorted(df["sample_rate"].unique())
    if ax is None:
        fig, ax = plt.subplots(1, len(rates), figsize=(4.2 * len(rates), 3.3), squeeze=False, sharey=True)
        ax = ax[0]
    for a, rate in zip(np.atleast_1d(ax), rates):
        sns.lineplot(data=df[df["sample_rate"] == rate], x="epoch", y=metric, hue="curve", marker="o", ax=a,
                     errorbar=None)
        a.set_title(f"sample rate {rate} %")
        a.set_ylabel(f"{split} {metric} (%)")
        a.xaxis.get_major_locator().set_params(integer=True)
        a.legend(fontsize=8, title=None)
    plt.tight_layout()
    return ax


def denormalize(images: torch.Tensor, mean, std) -> np.ndarray:
    """(B, 3, H, W) normalised tensors → (B, H, W, 3) floats in [0, 1] for imshow."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images.cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def show_concepts(method, dataset, indices, mean, std, class_names=None, device="cpu", cols: int = 4):
    """Images from ``dataset`` (eval transform) with the concept boxes Concept-Tuning's key encoder finds:
    one box per channel slice, from the most class-discriminative slice (red, 1) to the least (blue)."""
    from matplotlib.patches import Rectangle

    images = torch.stack([dataset[i][0] for i in indices]).to(device)
    labels = torch.tensor([dataset[i][1] for i in indices], device=device)
    found = method.find_concepts(images, labels)
    pics = denormalize(images, mean, std)
    rows = int(np.ceil(len(indices) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.7 * cols, 3.4 * rows), squeeze=False)
    colors = plt.cm.rainbow_r(np.linspace(0, 1, found.boxes.shape[1]))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(indices):
            continue
        ax.imshow(pics[k])
        slices: dict[tuple, list[int]] = {}          # slices whose peaks give the same box share one frame
        for p, box in enumerate(found.boxes[k].tolist()):
            slices.setdefault(tuple(box), []).append(p)
        for (x1, y1, x2, y2), ps in sorted(slices.items(), key=lambda kv: -kv[1][0]):
            c = colors[ps[0]]
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.8, ec=c))
            ax.text(x1, y2 - 0.5, ",".join(str(p + 1) for p in ps), color="white", fontsize=7, va="top",
                    bbox=dict(boxstyle="square,pad=0.1", fc=c, ec="none", alpha=0.85))
        name = class_names[labels[k]] if class_names else int(labels[k])
        conf = found.confusing[k, 0].item()
        ax.set_title(f"{name}\nmost confusable: {class_names[conf] if class_names else conf}", fontsize=8)
    fig.suptitle("Concept patches: box n = peak of channel slice n (1 = most class-discriminative, red; "
                 f"{found.boxes.shape[1]} = least, violet)", fontsize=10)
    plt.tight_layout()
    return fig
