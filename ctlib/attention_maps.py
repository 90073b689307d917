"""Fig. 1 of the paper: where each trained model looks, as Eigen-Grad-CAM maps on the last stage of its backbone.

The maps come from the ``grad-cam`` package (``pytorch_grad_cam.EigenGradCAM``): the first principal component
of activations × gradients of the explained class's logit at the target layer, clipped at 0, scaled to [0, 1]
per image and resized to the input. The target layer is ``Backbone.body`` (its output is the last stage's
feature map) of the encoder the run's main head reads: the query encoder for Bi-Tuning and Concept-Tuning.
The explained class is the true label by default (Fig. 1: where each model looks for the right class), or the
run's own prediction.

Caveats the figure inherits: the sign of a principal component is arbitrary (the package does not fix it, so
a map may highlight the complement of what another method's does), and the maps are as coarse as the last
feature map: 1/32 of the input (2×2 cells at 64 px, 7×7 at 224 px).

``attention_maps(grid, images)`` returns the per-image predictions table and the figure;
``eigen_grad_cam(method, images, classes)`` the maps alone; ``negative_transfer_indices(grid)`` test images like
the paper's example (the from-scratch model right, the pre-trained ones wrong).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .engine import load_predictions
from .methods.base import pooled

TARGETS = ("label", "prediction")
#: the names Fig. 1 uses; other methods are shown under their ctlib name
METHOD_LABELS = {"scratch": "scratch", "linear_probe": "linear probe", "erm": "fine-tuning",
                 "bi_tuning": "Bi-Tuning", "concept_tuning": "Concept-Tuning"}
RIGHT, WRONG = "\u2713", "\u2717"


def main_encoder(method: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(backbone, head) of the encoder ``method``'s main head reads: ``encoder_q`` where the method has a
    query/key pair (Bi-Tuning, Concept-Tuning), else the method itself; the head is ``head_target`` for
    methods that also keep the source classifier (Co-Tuning, LWF), else ``head``."""
    enc = method.encoder_q if getattr(method, "encoder_q", None) is not None else method
    backbone = getattr(enc, "backbone", None)
    head = getattr(enc, "head_target", None)
    head = head if head is not None else getattr(enc, "head", None)
    if backbone is None or head is None or not hasattr(backbone, "body"):
        raise TypeError(f"cannot find the backbone and main head of {type(method).__name__}: expected "
                        "`encoder_q.backbone`/`encoder_q.head`, or `backbone` and `head` (or `head_target`)")
    return backbone, head


class MainHeadModel(nn.Module):
    """A trained ctlib method as image → main-head logits (``method.heads(images)["main"]``), with gradients.

    ``Method.heads`` runs without autograd, so the logits are recomputed as the main head does:
    ``head(pooled(backbone(images)))`` on the encoder of ``main_encoder``; ``check(images)`` compares them with
    ``heads``. The input is made to require gradients, so a frozen backbone (linear probe) still passes the
    gradient to its last stage. ``target_layer`` is the backbone's body."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method.eval()
        self.backbone, self.head = main_encoder(method)

    @property
    def target_layer(self) -> nn.Module:
        return self.backbone.body

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not images.requires_grad:
            images = images.detach().requires_grad_(True)
        return self.head(pooled(self.backbone(images)))

    @torch.no_grad()
    def check(self, images: torch.Tensor, atol: float = 1e-4) -> None:
        """Raise if these logits are not the method's main head's on ``images``."""
        ours, theirs = self.head(pooled(self.backbone(images))), self.method.heads(images)["main"]
        if not torch.allclose(ours, theirs, atol=atol, rtol=1e-4):
            raise RuntimeError(f"{type(self.method).__name__}: head(pooled(backbone(x))) differs from its main head "
                               f"(max difference {(ours - theirs).abs().max().item():.3g}); main_encoder does not "
                               "find the encoder its main head reads")


def eigen_grad_cam(method: nn.Module, images: torch.Tensor, classes) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-Grad-CAM of ``method``'s main head for ``classes`` (one per image) on the last stage of its
    backbone: ((B, H, W) maps in [0, 1] at the images' size, (B,) the main head's predicted classes).
    ``images`` are normalised (the eval transform), on the method's device."""
    from pytorch_grad_cam import EigenGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = MainHeadModel(method)
    model.check(images)
    with EigenGradCAM(model=model, target_layers=[model.target_layer]) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
        predicted = cam.outputs.argmax(1).cpu().numpy()
    model.zero_grad(set_to_none=True)
    return maps, predicted


def spread_indices(count: int, total: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)`` (the first is 0)."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"the number of images must be a positive integer, got {count!r}")
    count = min(int(count), total)
    return [int(i) for i in np.arange(count) * total // count]


def negative_transfer_indices(configs, count: int = 6, reference: str = "scratch",
                              others=("linear_probe", "erm", "bi_tuning")) -> list[int]:
    """Up to ``count`` test indices, spread evenly over those the ``reference`` method's run gets right and
    every run of ``others`` (those in ``configs``) gets wrong: images like the paper's Fig. 1 example, where only
    the from-scratch model is right (negative transfer). From the runs' saved last-epoch predictions of the main
    head; an empty list when there are none."""
    configs = _finished_configs(configs)
    ref = [c for c in configs if c.method == reference]
    rest = [c for c in configs if c.method in others]
    if not ref or not rest:
        raise ValueError(f"negative transfer needs a {reference!r} run and one of {list(others)}; the runs are of "
                         f"{sorted({c.method for c in configs})}")
    saved = load_predictions(ref[0])
    target = saved["target"]
    mask = saved["main"] == target
    for c in rest:
        mask &= load_predictions(c)["main"] != target
    found = np.flatnonzero(mask)
    if not len(found):
        return []
    return [int(found[i]) for i in spread_indices(count, len(found))]


def method_labels(configs) -> list[str]:
    """One column title per run: the method's Fig. 1 name, and for a method with several runs what tells them
    apart (sample rate, backbone, seed, else the run id)."""
    names = [METHOD_LABELS.get(c.method, c.method) for c in configs]
    parts = {"sample_rate": lambda c: f"{c.sample_rate} %", "backbone": lambda c: c.backbone,
             "seed": lambda c: f"seed {c.seed}", "run_id": lambda c: c.run_id()}
    out = []
    for c, name in zip(configs, names):
        same = [d for d, n in zip(configs, names) if n == name]
        if len(same) > 1:
            key = next(k for k, f in parts.items() if len({f(d) for d in same}) == len(same) or k == "run_id")
            name = f"{name} ({parts[key](c)})"
        out.append(name)
    return out


def _finished_configs(configs) -> list:
    """``configs`` (a ``ctlib.grids.Grid`` or RunConfigs), distinct, each with a record; clear errors otherwise."""
    from .grid_fit import is_finished

    if hasattr(configs, "unique_configs"):
        configs = configs.unique_configs()
    configs = list(configs)
    if not configs:
        raise ValueError("no runs given: pass a grid (ctlib.grids.table_grid('attention_maps', ...)) or RunConfigs")
    todo = [c.run_id() for c in configs if not is_finished(c)]
    if len(todo) == len(configs):
        raise FileNotFoundError(f"none of the {len(configs)} runs is finished ({', '.join(todo[:3])}"
                                f"{' ...' if len(todo) > 3 else ''}): train them first with fit_grid(grid) (the "
                                "notebook's fit cell) or `ctlib reproduce attention_maps`")
    if todo:
        raise FileNotFoundError(f"{len(todo)} of the {len(configs)} runs are not finished ({', '.join(todo[:3])}"
                                f"{' ...' if len(todo) > 3 else ''}): train them first with fit_grid(grid) or "
                                "`ctlib reproduce attention_maps`")
    for key in ("dataset", "data_root", "image_size"):
        values = {str(getattr(c, key)) for c in configs}
        if len(values) > 1:
            raise ValueError(f"the runs differ in {key} ({sorted(values)}): the figure compares methods on the "
                             "same test images; pass runs of one dataset and image size")
    return configs


def _load(config, device):
    """The run's trained method; a run finished without its model is an error saying what to do."""
    from .engine import load_model

    try:
        return load_model(config, device)
    except FileNotFoundError:
        raise FileNotFoundError(f"run {config.run_id()} is finished but its model was not kept (keep_checkpoint="
                                f"{config.keep_checkpoint!r}): delete its record.json and train it again with "
                                "keep_checkpoint='model' (the default)") from None


def load_test_split(config, indices=()):
    """The test split of ``config``'s dataset (no transform); an index of ``indices`` outside it is an
    ``IndexError`` naming its size."""
    from .data import build_dataset

    test = build_dataset(config.dataset, config.data_root, "test", progress=False)
    total = len(test)
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < total]
    if bad:
        raise IndexError(f"image index(es) {bad} out of range: the {config.dataset} test split has {total} images "
                         f"(indices 0..{total - 1})")
    return test


def load_test_images(test, indices, image_size: int, mean, std):
    """(images (B, 3, S, S) normalised with ``mean``/``std``, labels, class names): images ``indices`` of the
    test split under the evaluation transform the runs were tested with."""
    from .data import eval_view

    view = test.with_transform(eval_view(image_size, mean, std))
    items = [view[int(i)] for i in indices]
    images = torch.stack([x for x, _ in items])
    labels = np.array([int(y) for _, y in items])
    return images, labels, list(test.classes)


@dataclass
class AttentionMaps:
    table: object          # DataFrame: image, method, true_class, predicted_class, correct
    figure: object         # matplotlib Figure
    maps: dict             # column title -> (B, H, W) maps in [0, 1]
    images: np.ndarray     # (B, H, W, 3) denormalised inputs
    indices: list


def attention_maps(configs, images=6, target: str = "label", device: str = "cpu") -> AttentionMaps:
    """Eigen-Grad-CAM of each finished run in ``configs`` (a grid or RunConfigs, one test set) on test images
    ``images`` (a count, spread evenly over the test split, or a list of test indices), explaining the true
    label (``target="label"``) or each run's prediction (``"prediction"``). The table has one row per (image,
    run) with the run's saved last-epoch prediction (``load_predictions``); the figure one row per image: the
    input, then one overlay per run (closed: shown where a notebook cell returns it, or saved)."""
    from .engine.run import resolve_device
    from .viz import denormalize

    device = resolve_device(device)
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: choose one of {list(TARGETS)}")
    configs = _finished_configs(configs)
    if isinstance(images, (int, np.integer)) and not isinstance(images, bool):
        test = load_test_split(configs[0])
        indices = spread_indices(images, len(test))
    else:
        indices = list(images)
        if not indices:
            raise ValueError("no image indices given")
        if len(set(indices)) < len(indices):
            raise ValueError(f"image indices repeat: {indices}")
        test = load_test_split(configs[0], indices)
    maps, predictions, pics, labels, classes = {}, {}, None, None, None
    for config, title in zip(configs, method_labels(configs)):
        method = _load(config, device)
        backbone, _ = main_encoder(method)
        batch, labels, classes = load_test_images(test, indices, config.image_size, backbone.mean, backbone.std)
        saved = load_predictions(config)
        if not np.array_equal(saved["target"][indices], labels):
            raise RuntimeError(f"run {config.run_id()}: the test labels it saved differ from the test split's now; "
                               "the dataset changed since the run was trained")
        predicted = saved["main"][indices]
        explain = labels if target == "label" else predicted
        maps[title], recomputed = eigen_grad_cam(method, batch.to(device), explain)
        if not np.array_equal(recomputed, predicted):
            diff = [int(i) for i, a, b in zip(indices, recomputed, predicted) if a != b]
            warnings.warn(f"{title}: on image(s) {diff} the main head here predicts otherwise than the run's saved "
                          f"predictions (another device or batch size; the table shows the saved ones)", stacklevel=2)
        if pics is None:
            pics = denormalize(batch, backbone.mean, backbone.std)
        predictions[title] = predicted
        del method
    import pandas as pd

    table = pd.DataFrame([{"image": int(i), "method": title, "true_class": classes[y],
                           "predicted_class": classes[p[k]], "correct": bool(y == p[k])}
                          for k, (i, y) in enumerate(zip(indices, labels)) for title, p in predictions.items()])
    fig = plot_attention_maps(pics, maps, table, target)
    return AttentionMaps(table, fig, maps, pics, indices)


def plot_attention_maps(pics: np.ndarray, maps: dict, table, target: str = "label", size: float = 1.9):
    """Rows = images, columns = the input, then each run's map over it, titled with the run and its
    prediction (✓ right, ✗ wrong; a wrong one is named)."""
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    titles = list(maps)
    n, cols = len(pics), len(titles) + 1
    fig, axes = plt.subplots(n, cols, figsize=(size * cols, size * n + 0.5), squeeze=False)
    for r in range(n):
        rows = table.iloc[r * len(titles):(r + 1) * len(titles)]
        first = rows.iloc[0]
        axes[r, 0].imshow(pics[r])
        axes[r, 0].set_title(f"#{first['image']}: {first['true_class']}", fontsize=8)
        for c, title in enumerate(titles, 1):
            row = rows.iloc[c - 1]
            axes[r, c].imshow(show_cam_on_image(pics[r].astype(np.float32), maps[title][r], use_rgb=True))
            mark = RIGHT if row["correct"] else f"{WRONG} {row['predicted_class']}"
            axes[r, c].set_title(f"{title}\n{mark}", fontsize=8, color="black" if row["correct"] else "tab:red")
    for ax in axes.flat:
        ax.axis("off")
    what = "the true class" if target == "label" else "each model's predicted class"
    fig.suptitle(f"Eigen-Grad-CAM on the last stage, explaining {what} (\u2713 right, \u2717 wrong: predicted class)",
                 fontsize=9)
    fig.tight_layout()
    plt.close(fig)          # not shown by the cell that computes it; a cell returning it shows it
    return fig


def predictions_display(table):
    """``table`` as one row per image (index, true class) and one column per run: its prediction, ✓ or ✗."""
    cells = table.assign(cell=[p + " " + (RIGHT if ok else WRONG)
                               for p, ok in zip(table["predicted_class"], table["correct"])])
    return cells.pivot_table(index=["image", "true_class"], columns="method", values="cell", aggfunc="first",
                             sort=False)
