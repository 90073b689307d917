"""Recipes, profiles, training views, the evaluation transform and the learning-rate schedules."""
import math

import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from ctlib.data.views import eval_view, training_views
from ctlib.engine import RunConfig
from ctlib.engine.run import Run
from ctlib.experiments import quickstart_grid, run_config
from ctlib.recipes import recipe


def test_cub_concept_tuning_is_the_authors_readme_command():
    c = run_config("paper", "concept_tuning", "cub200", 100)
    assert (c.epochs, c.milestones, c.schedule, c.lr, c.backbone_lr_mult) == (40, (12, 24), "multistep", 0.01, 0.1)
    assert c.method_args["confusing"] == 199 and c.iters_per_epoch == 500 and c.batch_size == 48
    assert c.backbone == "resnet50" and c.image_size == 224
    assert c.recipe["name"] == "ct-cub200-authors" and "README" in c.recipe["source"]


def test_cars_concept_tuning_is_cosine_with_one_lr():
    c = run_config("paper", "concept_tuning", "stanford_cars", 100)
    assert (c.epochs, c.schedule, c.backbone_lr_mult, c.method_args["confusing"]) == (20, "cosine", 1.0, 100)


def test_datasets_without_a_published_recipe_say_which_defaults_and_why():
    c = run_config("paper", "concept_tuning", "oxford_pets", 100)
    assert c.method_args["confusing"] == 36 and c.epochs == 30 and c.milestones == (12, 24)
    assert c.recipe["name"] == "ct-code-defaults" and "no recipe" in c.recipe["note"]
    assert run_config("paper", "concept_tuning", "caltech101").lr == 0.001


@pytest.mark.parametrize("dataset, rate, lr", [("cub200", 100, 0.01), ("cub200", 15, 0.001),
                                               ("stanford_cars", 30, 0.01), ("aircraft", 100, 0.001)])
def test_lwf_learning_rate_per_dataset_and_rate(dataset, rate, lr):
    assert run_config("paper", "lwf", dataset, rate).lr == lr


def test_tllib_baseline_recipes():
    erm = run_config("paper", "erm", "aircraft", 50)
    assert (erm.epochs, erm.milestones, erm.lr, erm.backbone_lr_mult, erm.weight_decay) == (20, (12,), 0.01, 0.1, 5e-4)
    assert run_config("paper", "delta", "cub200").weight_decay == 0.0
    assert run_config("paper", "l2_sp", "cub200").weight_decay == 0.0
    assert run_config("paper", "erm", "caltech101").lr == 0.001
    moco = recipe("bi_tuning", "cub200", 15, "moco")
    assert moco.run == {"lr": 0.1, "epochs": 12, "iters_per_epoch": 2000, "milestones": (3, 6, 9),
                        "schedule": "multistep", "backbone_lr_mult": 0.1}
    assert "156" in moco.note
    scratch = run_config("paper", "scratch", "cub200")
    assert scratch.backbone_lr_mult == 1.0 and scratch.pretrained is False
    with pytest.raises(ValueError, match="pre-training"):
        recipe("erm", "cub200", pretraining="simclr")


def test_smoke_profile_and_quickstart_grid():
    grid = quickstart_grid("smoke", sample_rates=[30], methods=["erm", "concept_tuning", "bi_tuning"])
    assert [c.method for c in grid] == ["erm", "concept_tuning", "bi_tuning"]
    assert grid[1].method_args == {"K": 8, "m": 0.99, "confusing": 9} and grid[0].recipe["name"] == "smoke-profile"
    with pytest.raises(ValueError, match="unknown method.*nosuch.*choose from"):
        quickstart_grid("smoke", methods=["nosuch"])
    with pytest.raises(ValueError, match="unknown profile"):
        run_config("tiny", "erm")
    # the recipe names a run's origin but not its identity: same settings, same run
    assert grid[0].hash() == grid[0].replace(recipe={"name": "other"}).hash()


def _ops(compose):
    return [type(t).__name__ for t in compose.transforms]


def test_four_training_views_of_concept_tuning():
    views = training_views(("image", "image", "patch", "patch"), 224)
    for t, scale in zip(views.transforms, [(0.2, 1.0), (0.2, 1.0), (0.5, 1.0), (0.5, 1.0)]):
        assert _ops(t) == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
        rrc = t.transforms[0]
        assert rrc.size == (224, 224) and rrc.scale == scale and rrc.ratio == pytest.approx((3 / 4, 4 / 3))
        assert t.transforms[1].p == 0.5
    no_flip = training_views(("image", "patch"), 224, hflip=False, color_jitter=True)
    assert _ops(no_flip.transforms[0]) == ["RandomResizedCrop", "ColorJitter", "ToTensor", "Normalize"]
    assert _ops(no_flip.transforms[1]) == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    img = Image.new("RGB", (300, 200), (128, 64, 32))
    out = training_views(("image", "patch"), 96)(img)
    assert [tuple(o.shape) for o in out] == [(3, 96, 96), (3, 96, 96)]


def test_evaluation_transform_resizes_256_and_centre_crops_224():
    t = eval_view(224)
    assert _ops(t) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert t.transforms[0].size == 256 and t.transforms[1].size == (224, 224)
    img = Image.new("RGB", (512, 256))
    img.paste((255, 0, 0), (0, 0, 256, 256))          # left half red, right half blue
    img.paste((0, 0, 255), (256, 0, 512, 256))
    x = T.Compose(t.transforms[:3])(img)                 # before normalisation
    assert x.shape == (3, 224, 224)
    assert x[0, :, :111].min() > 0.99 and x[2, :, 113:].min() > 0.99   # centre crop of the 512 x 256 image
    assert eval_view(64).transforms[0].size == round(64 * 256 / 224)


def _lrs(**kw):
    cfg = RunConfig(method="erm", dataset="demo", backbone="resnet18", pretrained=False, image_size=32, batch_size=4,
                    epochs=4, iters_per_epoch=1, progress=False, **kw)
    run = Run(cfg)
    out = []
    for _ in range(cfg.epochs):
        out.append([g["lr"] for g in run.optimizer.param_groups])
        run.optimizer.step()
        run.scheduler.step()
    return out


def test_multistep_schedule_with_backbone_multiplier():
    lrs = _lrs(lr=0.01, schedule="multistep", milestones=(2, 3), backbone_lr_mult=0.1)
    assert [x for row in lrs for x in row] == pytest.approx([0.001, 0.01, 0.001, 0.01, 0.0001, 0.001, 0.00001, 0.0001])


@pytest.mark.parametrize("mult", [1.0, 0.1])
def test_cosine_schedule_over_the_epochs(mult):
    lrs = _lrs(lr=0.01, schedule="cosine", backbone_lr_mult=mult)
    for e, (backbone, head) in enumerate(lrs):
        factor = (1 + math.cos(math.pi * e / 4)) / 2
        assert head == pytest.approx(0.01 * factor) and backbone == pytest.approx(0.01 * mult * factor)
