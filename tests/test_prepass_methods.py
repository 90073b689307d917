"""Methods with a one-off pre-pass (Co-Tuning, LWF, DELTA) and the engine's pre-pass support.

Every loss is checked against a plain transcription of TLlib's formula (BASELINES.md §2.5, §2.7,
§2.9) written here with explicit loops; the pre-passes against plain loops over images / channels.
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision.models.resnet import BasicBlock

from ctlib.data import ClassificationDataset, build_dataset, eval_view
from ctlib.data.embedded import EMBEDDED_FILE
from ctlib.engine import RunConfig, fit, run_dir
from ctlib.methods import METHODS, build_method
from ctlib.methods.base import Method, PrepareContext
from ctlib.methods.delta import ablation_losses, hook_points
from ctlib.models import build_backbone
from ctlib.models.backbones import Backbone, _ResNetBody


# ---- small fixtures -------------------------------------------------------------------------------
class _TinyResNet(nn.Module):
    """A torchvision-style ResNet (BasicBlocks, two per stage) with 4/6/8/8 channels."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.Identity()

        def stage(cin, cout, stride):
            down = None if cin == cout and stride == 1 else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            return nn.Sequential(BasicBlock(cin, cout, stride, down), BasicBlock(cout, cout))

        self.layer1, self.layer2 = stage(4, 4, 1), stage(4, 6, 2)
        self.layer3, self.layer4 = stage(6, 8, 2), stage(8, 8, 2)


def _tiny_backbone(source_head=True, seed=0, gain=1.0):
    torch.manual_seed(seed)
    net = _TinyResNet()
    for m in net.modules():     # non-trivial BN statistics, so eval-mode BN is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    net.layer4[1].bn2.weight.data *= gain   # larger features: confident logits, channel ablations that matter
    return Backbone(_ResNetBody(net), 8, 8, nn.Linear(8, 1000) if source_head else None, "tiny")


def _dataset(n_per_class=2, classes=5):
    g = np.random.default_rng(0)
    images = [g.integers(0, 256, (20, 20), dtype=np.uint8) for _ in range(n_per_class * classes)]
    labels = [i % classes for i in range(len(images))]
    return ClassificationDataset(images, labels, [str(c) for c in range(classes)],
                                 lambda a: Image.fromarray(a, mode="L"))


def _ctx(ds, train_transform=None, eval_transform=None, batch_size=3, **kw):
    return PrepareContext(dataset=ds, train_transform=train_transform or eval_view(16),
                          eval_transform=eval_transform or eval_view(16), device=torch.device("cpu"),
                          batch_size=batch_size, seed=0, lr=0.01, weight_decay=0.0, **kw)


def _batch(B=4, size=16, classes=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, size, size, generator=g), torch.randint(0, classes, (B,), generator=g)


def _log_softmax(v):            # plain: v_j − log Σ_k exp(v_k)
    return v - torch.log(torch.exp(v - v.max()).sum()) - v.max()


def _plain_ce(logits, labels):
    return sum(-_log_softmax(logits[b])[labels[b]] for b in range(len(labels))) / len(labels)


def _plain_logits(backbone, head, images):
    """Eval-mode logits of head(GAP(backbone(x))) one image at a time."""
    return torch.stack([head(backbone(x[None]).mean((2, 3)))[0] for x in images])


# ---- Co-Tuning ------------------------------------------------------------------------------------
def test_co_tuning_loss_matches_plain_formula():
    m = build_method("co_tuning", _tiny_backbone(), 5, 16, {"trade_off": 2.3}).train()
    R = torch.softmax(torch.randn(5, 1000), 1)
    m.set_prepared({"relationship": R})
    x, t = _batch()
    out = m.training_step([x], t, epoch=0)
    f = m.backbone(x).mean((2, 3))                 # train mode again: the same batch statistics
    y_s, y_t = m.head_source(f), m.head_target(f)
    soft = 0.0
    for b in range(len(t)):                        # −Σ_j R[t_b, j] log softmax(y_s,b)_j, batch mean
        ls = _log_softmax(y_s[b])
        soft = soft + sum(-R[t[b], j] * ls[j] for j in range(1000)) / len(t)
    expected = _plain_ce(y_t, t) + 2.3 * soft
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["co_tuning"] == pytest.approx(soft.item(), rel=1e-5)


def test_co_tuning_relationship_is_per_class_mean_of_source_softmax():
    m = build_method("co_tuning", _tiny_backbone(), 5, 16)
    ds = _dataset(n_per_class=3)
    train_t = eval_view(24)                        # a different, deterministic "training" transform
    state = m.prepare(_ctx(ds, train_transform=train_t, eval_transform=eval_view(16)))
    assert m.training                              # the pre-pass restores the mode
    m.eval()
    sums, counts = torch.zeros(5, 1000), [0] * 5
    with torch.no_grad():
        for i in range(len(ds)):                   # eval transform, eval mode, softmax, per-class mean
            x = eval_view(16)(ds.load_image(i))
            p = torch.softmax(m.head_source(m.backbone(x[None]).mean((2, 3)))[0], 0)
            sums[ds.targets[i]] += p
            counts[ds.targets[i]] += 1
    R = sums / torch.tensor(counts, dtype=torch.float)[:, None]
    assert torch.allclose(state["relationship"], R, atol=1e-6)
    assert torch.allclose(state["relationship"].sum(1), torch.ones(5), atol=1e-5)


def test_co_tuning_param_groups_and_trainable_source_head():
    bb = _tiny_backbone()
    m = build_method("co_tuning", bb, 5, 16, {"source_lr_mult": 0.1})
    assert m.head_source is not bb.source_head and torch.equal(m.head_source.weight, bb.source_head.weight)
    groups = m.param_groups(0.01, 0.1)
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.001, 0.01])
    assert groups[1]["params"] == list(m.head_source.parameters())
    with pytest.raises(RuntimeError, match="relationship pre-pass"):
        m.training_step([_batch()[0]], _batch()[1], 0)


@pytest.mark.parametrize("method", ["co_tuning", "lwf"])
def test_missing_source_head_is_a_clear_error(method):
    bb = _tiny_backbone()
    bb.source_head = None
    with pytest.raises(ValueError, match=rf"{method}.*ImageNet 1000-way classifier.*pretrained=False"):
        build_method(method, bb, 5, 16)


# ---- LWF ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [3.0, 1.0])
def test_lwf_loss_matches_plain_formula(T):
    m = build_method("lwf", _tiny_backbone(), 5, 16, {"trade_off": 4.0, "T": T}).train()
    recorded = torch.randn(10, 1000) * 3
    m.set_prepared({"recorded": recorded})
    x, t = _batch()
    index = torch.tensor([7, 2, 9, 0])
    out = m.training_step([x], t, epoch=0, index=index)
    f = m.backbone(x).mean((2, 3))
    y_s, y_t = m.head_source(f), m.head_target(f)
    kl = 0.0
    for b in range(len(t)):                        # KL(softmax(Ŷ/T) ‖ softmax(y_s/T)), batch mean, no T²
        p = torch.softmax(recorded[index[b]] / T, 0)
        log_q = _log_softmax(y_s[b] / T)
        kl = kl + sum(p[j] * (torch.log(p[j]) - log_q[j]) for j in range(1000)) / len(t)
    expected = _plain_ce(y_t, t) + 4.0 * kl
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["kd"] == pytest.approx(kl.item(), rel=1e-5)


def test_lwf_recorded_logits_are_keyed_by_dataset_index():
    ds = _dataset(n_per_class=2)                   # 10 images, loader batch 3: a partial last batch
    train_t, eval_t = eval_view(24), eval_view(16)  # deterministic stand-ins, told apart by size
    m = build_method("lwf", _tiny_backbone(), 5, 16).train()
    rec = {teacher: build_method("lwf", _tiny_backbone(), 5, 16, {"teacher": teacher}).prepare(
        _ctx(ds, train_t, eval_t))["recorded"] for teacher in ("recorded", "recorded_eval")}
    m.eval()
    with torch.no_grad():
        plain = {teacher: _plain_logits(m.backbone, m.head_source, [t(ds.load_image(i)) for i in range(10)])
                 for teacher, t in (("recorded", train_t), ("recorded_eval", eval_t))}
    for teacher in rec:
        assert torch.allclose(rec[teacher], plain[teacher], atol=1e-5)
    assert not torch.allclose(rec["recorded"], rec["recorded_eval"], atol=1e-3)
    m.set_prepared({"recorded": rec["recorded"]})
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(m.teacher_logits(perm), plain["recorded"][perm], atol=1e-5)
    assert not torch.allclose(m.teacher_logits(perm), plain["recorded"], atol=1e-3)


def test_lwf_old_head_frozen_by_default_trainable_as_option():
    x, t = _batch()
    m = build_method("lwf", _tiny_backbone(), 5, 16).train()
    m.set_prepared({"recorded": torch.randn(10, 1000)})
    m.training_step([x], t, 0, index=torch.arange(4))["loss"].backward()
    assert all(p.grad is None for p in m.head_source.parameters())
    assert m.backbone.body.conv1.weight.grad.abs().sum() > 0
    assert [g["lr"] for g in m.param_groups(0.01, 0.1)] == pytest.approx([0.001, 0.01])
    m2 = build_method("lwf", _tiny_backbone(), 5, 16, {"train_source_head": True}).train()
    groups = m2.param_groups(0.01, 0.1)
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.001, 0.01])
    assert groups[1]["params"] == list(m2.head_source.parameters())
    with pytest.raises(ValueError, match="teacher"):
        build_method("lwf", _tiny_backbone(), 5, 16, {"teacher": "online"})


# ---- DELTA ----------------------------------------------------------------------------------------
def _stage_outputs(modules, forward):
    """Outputs of ``modules`` during ``forward()``, captured by the test's own hooks."""
    out = {}
    hs = [mod.register_forward_hook(lambda _m, _i, o, k=k: out.__setitem__(k, o)) for k, mod in enumerate(modules)]
    try:
        forward()
    finally:
        for h in hs:
            h.remove()
    return [out[k] for k in range(len(modules))]


def _tiny_layers(backbone):
    b = backbone.body
    return [b.layer1[1].conv2, b.layer2[1].conv2, b.layer3[1].conv2, b.layer4[1].conv2]


@pytest.mark.parametrize("regularization", ["attention_feature_map", "feature_map"])
def test_delta_loss_matches_plain_formula(regularization):
    alpha, beta = 0.03, 0.02
    m = build_method("delta", _tiny_backbone(source_head=False), 5, 16,
                     {"regularization": regularization, "trade_off_backbone": alpha, "trade_off_head": beta}).train()
    with torch.no_grad():                          # target ≠ source: perturb the fine-tuned backbone
        for p in m.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    att = [torch.softmax(torch.randn(c), 0) for c in (4, 6, 8, 8)]
    m.set_prepared({"attention": torch.cat(att)})
    x, t = _batch()
    out = m.training_step([x], t, epoch=0)
    assert not m.source.training
    with torch.no_grad():
        fs = _stage_outputs(_tiny_layers(m.source), lambda: m.source(x))
        ft = _stage_outputs(_tiny_layers(m.backbone), lambda: m.backbone(x))
        y = m.head(m.backbone(x).mean((2, 3)))
    omega = 0.0
    for l, (s, tt) in enumerate(zip(fs, ft)):
        B, C, H, W = s.shape
        for b in range(B):
            for c in range(C):
                sq = sum(float(tt[b, c, i, j] - s[b, c, i, j]) ** 2 for i in range(H) for j in range(W))
                w = C * float(att[l][c]) / (H * W) if regularization == "attention_feature_map" else 1.0
                omega += 0.5 * w * sq
    head = 0.5 * sum(float(v) ** 2 for p in (m.head.weight.detach(), m.head.bias.detach()) for v in p.flatten())
    expected = float(_plain_ce(y, t)) + alpha * omega + beta * head
    assert out["loss"].item() == pytest.approx(expected, rel=1e-4)
    assert out["reg_backbone"] == pytest.approx(alpha * omega, rel=1e-4) and omega > 0


def test_delta_source_is_frozen_eval_and_checkpointed():
    m = build_method("delta", _tiny_backbone(source_head=False), 5, 16, {"regularization": "feature_map"}).train()
    assert not m.source.training and all(not p.requires_grad for p in m.source.parameters())
    assert any(k.startswith("source.") for k in m.state_dict())
    assert all(p is not q for p, q in zip(m.source.parameters(), m.backbone.parameters()))
    x, t = _batch()
    m.training_step([x], t, 0)["loss"].backward()
    assert all(p.grad is None for p in m.source.parameters())
    assert m.prepare(_ctx(_dataset())) is None     # feature_map: no pre-pass


def _names(backbone):
    names = {id(mod): name for name, mod in backbone.body.named_modules()}
    return [names[id(layer)] for _, layer in hook_points(backbone)]


def test_delta_hooked_layers():
    assert _names(build_backbone("resnet50", False)) == ["layer1.2.conv3", "layer2.3.conv3", "layer3.5.conv3",
                                                         "layer4.2.conv3"]                 # TLlib's names
    assert _names(build_backbone("resnet18", False)) == [f"layer{k}.1.conv2" for k in (1, 2, 3, 4)]
    effnet = build_backbone("efficientnet_lite0", False)
    assert _names(effnet) == [f"net._blocks.{i}._project_conv" for i in (2, 4, 10, 15)]
    assert [layer.out_channels for _, layer in hook_points(effnet)] == [24, 40, 112, 320]


def _plain_ablation(model, layer, x, y):
    """Δ loss with each output filter of ``layer`` zeroed in turn (TLlib's loop)."""
    out = []
    with torch.no_grad():
        for j in range(layer.out_channels):
            saved = layer.weight[j].clone()
            layer.weight[j] = 0.0
            out.append(float(_plain_ce(model(x), y)))
            layer.weight[j] = saved
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def float64():
    """Float64 models and images (ToTensor follows the default dtype): exact comparisons of loss
    differences that are far below float32 resolution in early layers."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_delta_batched_ablation_equals_plain_per_channel_ablation(float64):
    from ctlib.methods.delta import _Classifier

    torch.manual_seed(0)
    model = _Classifier(_tiny_backbone(source_head=False, gain=30), 5).eval()
    x, y = _batch(B=3)
    for block, layer in hook_points(model.backbone):
        batched = ablation_losses(model, block, layer, x, y, chunk=9)   # 3 channels per pass, a partial last pass
        assert torch.allclose(batched, _plain_ablation(model, layer, x, y), rtol=0, atol=1e-10)


def test_delta_attention_equals_plain_ablation_and_sums_to_one(float64):
    from ctlib.methods.delta import _Classifier

    ds = _dataset(n_per_class=2)                 # one batch of the whole set: the shuffle does not matter
    m = build_method("delta", _tiny_backbone(source_head=False, gain=30), 5, 16,
                     {"attention_epochs": 0, "attention_batch_size": len(ds), "attention_iteration_limit": -1})
    torch.manual_seed(5)
    att = m.prepare(_ctx(ds))["attention"]
    backbone = _tiny_backbone(source_head=False, gain=30)
    torch.manual_seed(5)                         # the same new head as the pre-pass model's
    model = _Classifier(backbone, 5).eval()
    x = torch.stack([eval_view(16)(ds.load_image(i)) for i in range(len(ds))])
    y = torch.tensor(ds.targets)
    with torch.no_grad():
        loss0 = float(_plain_ce(model(x), y))
    start = 0
    for layer in _tiny_layers(model.backbone):
        delta = (_plain_ablation(model, layer, x, y) - loss0).numpy()
        z = (delta - delta.mean()) / delta.std()   # population std, as numpy
        e = np.exp(z / 5)
        a = att[start:start + layer.out_channels]
        assert a.sum().item() == pytest.approx(1.0, abs=1e-5) and (a > 0).all()
        assert np.allclose(a.numpy(), e / e.sum(), atol=1e-6)   # float32 attention from float64 Δ
        start += layer.out_channels
    assert start == att.numel()


@pytest.mark.parametrize("freeze", [False, True])
def test_delta_attention_training_freezes_only_as_an_option(freeze):
    from ctlib.methods.delta import _Classifier

    m = build_method("delta", _tiny_backbone(source_head=False), 5, 16,
                     {"attention_epochs": 1, "attention_batch_size": 4, "attention_freeze_backbone": freeze})
    model = _Classifier(_tiny_backbone(source_head=False), 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = _ctx(_dataset())
    m._train_for_attention(model, ctx.loader(ctx.train_transform, 4, shuffle=True), ctx)
    after = model.state_dict()
    backbone_same = all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert backbone_same == freeze                 # TLlib's "freeze" trains the whole network
    assert not torch.equal(before["head.weight"], after["head.weight"])


@pytest.mark.parametrize("pretrained,init,expect_supervised", [("/ckpt/moco.pt", "supervised", True),
                                                               ("/ckpt/moco.pt", "run", False),
                                                               ("imagenet", "supervised", False)])
def test_delta_attention_init(monkeypatch, pretrained, init, expect_supervised):
    import ctlib.methods.delta as delta_mod

    bb = _tiny_backbone(source_head=False)
    bb.pretrained = pretrained
    supervised = _tiny_backbone(source_head=False, seed=1)
    calls, used = [], []
    monkeypatch.setattr(delta_mod, "build_backbone", lambda name, pre: calls.append((name, pre)) or supervised)
    monkeypatch.setattr(delta_mod.DELTA, "_ablate",
                        lambda self, model, loader, ctx: used.append(model) or torch.zeros(26))
    m = build_method("delta", bb, 5, 16, {"attention_epochs": 0, "attention_init": init})
    m.prepare(_ctx(_dataset()))
    start = supervised if expect_supervised else bb
    assert calls == ([("tiny", True)] if expect_supervised else [])
    assert torch.equal(used[0].backbone.body.conv1.weight, start.body.conv1.weight)


def test_delta_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match=r"attention_iteration_limit=0 \(must be an integer >= 1, or -1"):
        build_method("delta", _tiny_backbone(), 5, 16, {"attention_iteration_limit": 0})
    with pytest.raises(ValueError, match=r"regularization='l2' \(must be one of \['attention_feature_map', 'feature_"):
        build_method("delta", _tiny_backbone(), 5, 16, {"regularization": "l2"})


# ---- engine: pre-pass once, cached, resume --------------------------------------------------------
def test_method_defaults_have_no_pre_pass():
    m = build_method("erm", _tiny_backbone(), 5, 16)
    assert m.prepare(None) is None and m.set_prepared({}) is None and Method.needs_index is False
    assert METHODS["lwf"].needs_index and not METHODS["co_tuning"].needs_index


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """The demo set cut to 4 training and 2 test images per class (fast evaluation)."""
    z = dict(np.load(EMBEDDED_FILE))
    path = tmp_path_factory.mktemp("demo") / EMBEDDED_FILE.name

    def take(split, n):
        idx = np.concatenate([np.where(z[f"{split}_labels"] == c)[0][:n] for c in range(len(z["classes"]))])
        return z[f"{split}_images"][idx], z[f"{split}_labels"][idx]

    (tr, trl), (te, tel) = take("train", 4), take("test", 2)
    np.savez(path, train_images=tr, train_labels=trl, test_images=te, test_labels=tel, classes=z["classes"])
    return str(path)


FIT = {"co_tuning": dict(backbone="efficientnet_lite0", pretrained=True, image_size=64),
       "lwf": dict(backbone="efficientnet_lite0", pretrained=True, image_size=64),
       "delta": dict(backbone="resnet18", pretrained=False, image_size=32, weight_decay=0.0,
                     method_args={"attention_epochs": 1, "attention_batch_size": 4, "attention_iteration_limit": 1})}


def _config(tmp_path, method, data_root, **kw):
    base = dict(method=method, dataset="demo", data_root=data_root, sample_rate=100, batch_size=8, epochs=3,
                iters_per_epoch=2, milestones=(2,), results_dir=str(tmp_path), progress=False,
                keep_checkpoint="full", **FIT[method])
    return RunConfig(**{**base, **kw})


def _strip(record):
    return {k: record[k] for k in ("history", "final", "config_hash", "data")}


@pytest.mark.parametrize("method", ["co_tuning", "lwf", "delta"])
def test_pre_pass_runs_once_and_resume_gives_the_same_record(tmp_path, monkeypatch, tiny_demo, method):
    full = fit(_config(tmp_path / "a", method, tiny_demo))
    assert full["prepare"]["cached"] is False and full["prepare"]["time_s"] >= 0
    assert (run_dir(_config(tmp_path / "a", method, tiny_demo)) / "prepare.pt").exists()   # kept with "full"
    cfg = _config(tmp_path / "b", method, tiny_demo, keep_checkpoint="model")
    assert fit(cfg, stop_after_epoch=1) is None
    assert (run_dir(cfg) / "prepare.pt").exists()
    monkeypatch.setattr(METHODS[method], "prepare", lambda self, ctx: pytest.fail("pre-pass computed again"))
    resumed = fit(cfg)
    assert resumed["prepare"]["cached"] is True
    assert json.dumps(_strip(resumed), sort_keys=True) == json.dumps(_strip(full), sort_keys=True)
    assert all(math.isfinite(v) for h in full["history"] for v in h["train"].values())
    assert not (run_dir(cfg) / "prepare.pt").exists() and not (run_dir(cfg) / "checkpoint.pt").exists()


def test_pre_pass_of_another_config_is_recomputed_and_indices_reach_the_step(tmp_path, monkeypatch, tiny_demo):
    cfg = _config(tmp_path, "lwf", tiny_demo, epochs=1, iters_per_epoch=2)
    out = run_dir(cfg)
    out.mkdir(parents=True)
    torch.save({"config_hash": "other", "time_s": 0.0, "state": {"recorded": torch.zeros(3, 1000)}},
               out / "prepare.pt")
    seen = []
    step = METHODS["lwf"].training_step

    def spy(self, views, labels, epoch, index=None):
        seen.append((labels.clone(), index.clone()))
        return step(self, views, labels, epoch, index=index)

    monkeypatch.setattr(METHODS["lwf"], "training_step", spy)
    rec = fit(cfg)
    assert rec["prepare"]["cached"] is False
    targets = torch.tensor(build_dataset("demo", tiny_demo, "train", 100).targets)
    assert len(seen) == 2 and all(torch.equal(labels, targets[index]) for labels, index in seen)
    assert "prepare" not in fit(_config(tmp_path, "delta", tiny_demo, epochs=1, iters_per_epoch=1,
                                        method_args={"regularization": "feature_map"}))
