"""Plots for the notebooks: accuracy per method, learning curves from run records, concept patches on images."""
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


def _long(frame, protocols=("reference", "honest")):
    from .tables import PROTOCOLS

    keep = [c for c in frame.columns if c not in protocols]
    long = frame.melt(id_vars=keep, value_vars=list(protocols), var_name="protocol", value_name="top1")
    long["protocol"] = long["protocol"].map({p: PROTOCOLS[p].split(":")[0] for p in protocols})
    return long


def plot_accuracy(frame, x: str = "sample_rate", hue: str = "method", title: str | None = None):
    """Test top-1 of each run of a table (``ctlib.tables.grid_frame``): one panel per dataset and protocol;
    a line over ``x`` when the table has several values of it (mean and spread over seeds), else bars."""
    import seaborn as sns

    long = _long(frame)
    if long[x].nunique() > 1:
        g = sns.relplot(data=long, x=x, y="top1", hue=hue, col="protocol", row="dataset", kind="line", marker="o",
                        height=3.2, aspect=1.3, errorbar="sd")
        g.set_axis_labels(x, "test top-1 (%)")
    else:
        height = max(2.5, 0.3 * long[hue].nunique() + 1)
        g = sns.catplot(data=long, x="top1", y=hue, col="protocol", row="dataset", kind="bar", height=height,
                        aspect=max(1.3, 4.5 / height), errorbar="sd", color="tab:blue")
        g.set_axis_labels("test top-1 (%)", "")
    g.set_titles(template="{row_name} · {col_name}")
    if title:
        g.figure.suptitle(title, fontsize=9, y=1.02)
    return g


def save_figure(results_dir, name: str, dpi: int = 120):
    """Save the current figure as ``results_dir/<name>.png`` (beside the tables; ``ctlib reproduce``'s index
    links it); returns the path."""
    from pathlib import Path

    path = Path(results_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.gcf().savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def plot_sensitivity(frame, title: str | None = None):
    """Test top-1 against each swept setting's value: one panel per setting, one line per protocol."""
    import seaborn as sns

    long = _long(frame)
    settings = list(dict.fromkeys(long["setting"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(3.2 * len(settings), 3.0), squeeze=False, sharey=True)
    for ax, setting in zip(axes[0], settings):
        sns.lineplot(data=long[long["setting"] == setting], x="value", y="top1", hue="protocol", marker="o",
                     errorbar="sd", ax=ax, legend=ax is axes[0][0])
        ax.set_title(setting)
        ax.set_xlabel(setting)
        ax.set_ylabel("test top-1 (%)")
    if title:
        fig.suptitle(title, fontsize=9)
    plt.tight_layout()
    return axes[0]


def plot_negative_transfer(frame, title: str | None = None):
    """Per method: the share of test images scratch gets right and the method wrong, and the reverse."""
    import seaborn as sns

    long = frame.melt(id_vars=["method", "dataset", "seed"], value_vars=["scratch_right_method_wrong_pct",
                      "method_right_scratch_wrong_pct"], var_name="share", value_name="percent of test images")
    long["share"] = long["share"].map({"scratch_right_method_wrong_pct": "scratch right, method wrong",
                                       "method_right_scratch_wrong_pct": "method right, scratch wrong"})
    g = sns.catplot(data=long, y="method", x="percent of test images", hue="share", col="dataset", kind="bar",
                    errorbar="sd", height=0.3 * long["method"].nunique() + 1.5, aspect=1.6)
    if title:
        g.figure.suptitle(title, fontsize=9, y=1.02)
    return g


def plot_cost(costs):
    """Seconds per training step and peak memory of each method as multiples of ERM's."""
    import seaborn as sns

    cols = [c for c in ("step_s_x_erm", "peak_rss_mb_x_erm", "peak_cuda_mb_x_erm") if costs[c].notna().any()]
    long = costs.melt(id_vars=["method"], value_vars=cols, var_name="measure", value_name="× ERM")
    long["measure"] = long["measure"].map({"step_s_x_erm": "time per step", "peak_rss_mb_x_erm": "peak RSS",
                                           "peak_cuda_mb_x_erm": "peak CUDA memory"})
    g = sns.catplot(data=long, y="method", x="× ERM", col="measure", kind="bar", errorbar="sd",
                    height=0.3 * long["method"].nunique() + 1.5, aspect=1.2, color="tab:blue", sharex=False)
    for ax in g.axes.flat:
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    return g


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
