"""The six baselines (BASELINES.md §2.2–2.4, 2.6, 2.8, 2.10): each loss term against a plain transcription
of TLlib's formula written here, the frozen/random-init contracts, bad settings, and short runs through
the engine (resume included)."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ctlib.engine.run as run_mod
from ctlib.engine import RunConfig, fit, run_dir
from ctlib.methods import METHODS, build_method
from ctlib.methods.base import pooled
from ctlib.methods.scratch import randomise_backbone
from ctlib.methods.stochnorm import StochNorm2d, to_stochnorm
from ctlib.models import build_backbone
from short_runs import short_run_losses

BASELINES = ["linear_probe", "scratch", "l2_sp", "bss", "stochnorm", "bi_tuning"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread (after conftest's two): on a shared two-core machine two threads spin and
    make these small CPU runs several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _method(name, num_classes=5, seed=0, backbone="resnet18", pretrained=False, **settings):
    torch.manual_seed(seed)
    return build_method(name, build_backbone(backbone, pretrained), num_classes, 64, settings).train()


def _images(B=6, size=32, seed=1, n=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, size, size, generator=g) for _ in range(n)]


def test_registered_with_their_settings():
    assert torch.get_num_threads() == 1
    assert set(BASELINES) <= set(METHODS)
    defaults = {"linear_probe": {"smoothing": 0.0}, "scratch": {"smoothing": 0.0, "init_seed": None},
                "l2_sp": {"trade_off_backbone": 0.01, "trade_off_head": 0.01}, "bss": {"k": 1, "trade_off": 0.001},
                "stochnorm": {"p": 0.5},
                "bi_tuning": {"K": 40, "m": 0.999, "T": 0.07, "trade_off": 1.0, "projection_dim": 128,
                              "projector_lr_mult": 0.1}}
    from dataclasses import asdict
    for name, want in defaults.items():
        assert asdict(METHODS[name].make_settings({})) == want, name
    assert METHODS["bi_tuning"].view_kinds == ("image", "image")


@pytest.mark.parametrize("name, args, match", [
    ("bss", {"k": 0}, r"k=0 \(must be an integer >= 1\)"),
    ("stochnorm", {"p": 1.5}, r"p=1.5 \(must be in \[0, 1\]\)"),
    ("stochnorm", {"p": -0.1}, r"p=-0.1 \(must be in \[0, 1\]\)"),
    ("bi_tuning", {"K": 0}, r"K=0 \(must be an integer >= 1\)"),
    ("bi_tuning", {"m": 1.0}, r"m=1.0 \(must be in \[0, 1\)\)"),
    ("bi_tuning", {"m": -0.5}, r"m=-0.5 \(must be in \[0, 1\)\)"),
    ("bi_tuning", {"T": 0.0}, r"T=0.0 \(must be a finite number > 0\)"),
    ("l2_sp", {"trade_off_head": -1.0}, r"trade_off_head=-1.0 \(must be a finite number >= 0\)"),
    ("scratch", {"lr_mult": 2}, r"unknown setting.*'lr_mult'.*valid settings"),
])
def test_bad_settings_are_clear_errors(name, args, match):
    with pytest.raises(ValueError, match=match):
        METHODS[name].make_settings(args)


# ---- linear probe ---------------------------------------------------------------------------------

def test_linear_probe_keeps_the_backbone_bit_identical_and_trains_only_the_head():
    m = _method("linear_probe")
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    head0 = m.head.weight.detach().clone()
    m.train()
    assert m.training and m.head.training and not any(x.training for x in m.backbone.modules())
    assert not any(p.requires_grad for p in m.backbone.parameters())
    groups = m.param_groups(0.01, 0.1)
    assert [g["lr"] for g in groups] == [0.01]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in m.head.parameters()}
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    for step in range(3):
        opt.zero_grad()
        m.training_step(_images(seed=step), labels, 0)["loss"].backward()
        assert all(p.grad is None for p in m.backbone.parameters())
        assert all(p.grad is not None for p in m.head.parameters())
        opt.step()
    after = m.backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(m.head.weight, head0)


# ---- scratch --------------------------------------------------------------------------------------

def test_scratch_reinitialises_a_resnet_as_torchvision_does():
    torch.manual_seed(0)
    bb = build_backbone("resnet18", False)
    bb.source_head = nn.Linear(bb.channels, 1000)   # as a backbone with ImageNet weights has
    with torch.no_grad():                      # stand-in "pretrained" weights
        for name, t in bb.state_dict().items():
            if t.is_floating_point():
                t.fill_(0.3)
    m = build_method("scratch", bb, 5, 64, {"init_seed": 7})
    assert bb.pretrained == "none (scratch)"
    bns = [x for x in bb.modules() if isinstance(x, nn.BatchNorm2d)]
    convs = [x for x in bb.modules() if isinstance(x, nn.Conv2d)]
    assert bns and all(torch.equal(x.weight, torch.ones_like(x.weight))
                       and torch.equal(x.bias, torch.zeros_like(x.bias))
                       and torch.equal(x.running_mean, torch.zeros_like(x.running_mean))
                       and torch.equal(x.running_var, torch.ones_like(x.running_var)) for x in bns)
    big = bb.body.layer4[0].conv2.weight                           # 512 × 512 × 3 × 3, fan_out = 512·9
    assert abs(big.std().item() / (2.0 / (512 * 9)) ** 0.5 - 1) < 0.02 and abs(big.mean().item()) < 1e-3
    assert all(not torch.all(c.weight == 0.3) for c in convs) and not torch.all(bb.source_head.weight == 0.3)
    assert [g["lr"] for g in m.param_groups(0.01, 0.1)] == [0.01, 0.01]
    # a given init_seed gives the same weights and leaves the global RNG alone
    bb2 = build_backbone("resnet18", False)
    state = torch.get_rng_state()
    randomise_backbone(bb2, 7)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(bb.state_dict().values(), bb2.state_dict().values()))


def test_scratch_discards_pretrained_weights_of_other_backbones():
    pre = build_backbone("efficientnet_lite0", True)
    m = _method("scratch", backbone="efficientnet_lite0", pretrained=True)
    convs = [(n, p) for n, p in m.backbone.named_parameters() if p.dim() == 4]
    ref = dict(pre.named_parameters())
    assert all(not torch.equal(p, ref[n]) for n, p in convs)
    assert all(torch.equal(x.weight, torch.ones_like(x.weight)) and torch.equal(x.bias, torch.zeros_like(x.bias))
               for x in m.backbone.modules() if isinstance(x, nn.BatchNorm2d))
    assert m.backbone.pretrained == "none (scratch)"


# ---- L2-SP ----------------------------------------------------------------------------------------

def test_l2_sp_loss_is_ce_plus_explicit_sums():
    m = _method("l2_sp", trade_off_backbone=0.03, trade_off_head=0.2)
    w0 = {n: p.detach().clone().double() for n, p in m.backbone.body.named_parameters()}
    x, labels = _images()[0], torch.tensor([0, 1, 2, 3, 4, 0])
    assert m.training_step([x], labels, 0)["omega_sp"] == 0.0           # Ω_SP is 0 at the start
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.backbone.body.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    out = m.training_step([x], labels, 0)
    # plain transcription: ½ Σ_p Σ_elements (w − w⁰)², ½ (Σ W² + Σ b²), in float64, element sums via dot
    sp = 0.0
    for n, p in m.backbone.body.named_parameters():
        d = (p.detach().double() - w0[n]).flatten()
        sp += 0.5 * float(d @ d)
    W, b = m.head.weight.detach().double().flatten(), m.head.bias.detach().double()
    head = 0.5 * (float(W @ W) + float(b @ b))
    ce = F.cross_entropy(m.head(pooled(m.backbone(x))), labels).item()
    assert out["omega_sp"] == pytest.approx(sp, rel=1e-5) and out["omega_head"] == pytest.approx(head, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce + 0.03 * sp + 0.2 * head, rel=1e-5)
    # gradient of the penalty: α (w − w⁰) on the backbone
    m.zero_grad()
    (0.03 * m.omega_sp()).backward()
    name, p = next(iter(m.backbone.body.named_parameters()))
    assert torch.allclose(p.grad.double(), 0.03 * (p.detach().double() - w0[name]), atol=1e-9)
    # w⁰ lives in the state dict: a fresh method (other init) takes it over exactly
    other = _method("l2_sp", seed=5)
    other.load_state_dict(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.w0.tensors(), m.w0.tensors()))
    assert any(k.startswith("w0.") for k in m.state_dict())


# ---- BSS ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3])
def test_bss_term_is_the_k_smallest_squared_singular_values(k):
    m = _method("bss", k=k, trade_off=0.5)
    x, labels = _images(B=8)[0], torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    out = m.training_step([x], labels, 0)
    f = pooled(m.backbone(x)).detach()
    s = np.linalg.svd(f.double().numpy().T, compute_uv=False)        # TLlib: SVD of Fᵀ, descending
    want = sum(s[len(s) - 1 - i] ** 2 for i in range(k))
    assert out["bss"] == pytest.approx(want, rel=1e-4)
    ce = F.cross_entropy(m.head(f), labels).item()
    assert out["loss"].item() == pytest.approx(ce + 0.5 * want, rel=1e-4)


def test_bss_k_larger_than_the_batch_is_an_error():
    m = _method("bss", k=9)
    with pytest.raises(ValueError, match=r"choose 1 <= k <= 8"):
        m.training_step(_images(B=8), torch.zeros(8, dtype=torch.long), 0)


# ---- StochNorm ------------------------------------------------------------------------------------

def _bn():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    return bn


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_stochnorm_extremes_are_running_and_batch_bn_and_stats_update_like_bn(p):
    bn = _bn()
    sn = to_stochnorm(copy.deepcopy(bn), p).train()
    x = torch.randn(4, 6, 5, 5) * 2 + 1
    eval_out = copy.deepcopy(bn).eval()(x)            # running statistics before the update
    train_bn = copy.deepcopy(bn).train()
    train_out = train_bn(x)
    out = sn(x)
    assert torch.equal(out, eval_out if p == 0.0 else train_out)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(sn, key), getattr(train_bn, key)), key
    sn.eval()
    assert torch.equal(sn(x), train_bn.eval()(x))     # eval: plain BN


def test_stochnorm_half_mixes_whole_channels_from_the_torch_rng():
    bn, x = _bn(), torch.randn(4, 6, 5, 5)
    z0, z1 = copy.deepcopy(bn).eval()(x), copy.deepcopy(bn).train()(x)
    picks = []
    for seed in range(20):
        torch.manual_seed(seed)
        out = to_stochnorm(copy.deepcopy(bn), 0.5).train()(x)
        for c in range(6):
            batch, running = torch.equal(out[:, c], z1[:, c]), torch.equal(out[:, c], z0[:, c])
            assert batch != running
            picks.append(batch)
        torch.manual_seed(seed)
        assert torch.equal(out, to_stochnorm(copy.deepcopy(bn), 0.5).train()(x))   # seeded: same masks
    assert 0.3 < sum(picks) / len(picks) < 0.7


def test_stochnorm_method_replaces_every_bn_and_keeps_state_dict_names():
    torch.manual_seed(0)
    plain = build_backbone("resnet18", False)
    state = copy.deepcopy(plain.state_dict())
    m = build_method("stochnorm", plain, 5, 64, {"p": 0.25})
    assert m.converted == 20
    assert not any(isinstance(x, nn.BatchNorm2d) and not isinstance(x, StochNorm2d) for x in m.modules())
    assert all(x.p == 0.25 for x in m.modules() if isinstance(x, StochNorm2d))
    got = m.backbone.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    other = _method("stochnorm", seed=3)
    other.load_state_dict(m.state_dict())                      # a checkpoint round-trips, strictly
    m.backbone.load_state_dict(state)                          # and so does a plain-BN backbone state


# ---- Bi-Tuning ------------------------------------------------------------------------------------

def _bituning_reference(ref, x_q, x_k, labels, K, m, T, trade_off):
    """TLlib's BiTuning.forward + loss, transcribed with loops over samples and queue entries."""
    q, k = ref.encoder_q, ref.encoder_k
    h = pooled(q.backbone(x_q))
    y_q = q.head(h)
    z_q = F.normalize(q.projector(h), dim=1)
    hn_q = F.normalize(torch.cat([h, torch.ones(h.shape[0], 1)], 1), dim=1)
    with torch.no_grad():
        for pk, pq in zip(k.parameters(), q.parameters()):
            pk.data = pk.data * m + pq.data * (1.0 - m)
        hk = pooled(k.backbone(x_k))
        z_k = F.normalize(k.projector(hk), dim=1)
        hn_k = F.normalize(torch.cat([hk, torch.ones(hk.shape[0], 1)], 1), dim=1)
    queue_z, queue_h, ptr = ref.queue_z.clone(), ref.queue_h.clone(), ref.queue_ptr.clone()
    queue_z_before = queue_z.clone()
    B, C = len(labels), queue_z.shape[1]
    rows_z = []
    for i in range(B):
        c = int(labels[i])
        row = [z_q[i] @ z_k[i]]
        row += [z_q[i] @ queue_z_before[:, c, j] for j in range(K)]
        row += [z_q[i] @ queue_z_before[:, c2, j] for c2 in range(C) if c2 != c for j in range(K)]
        rows_z.append(torch.stack(row))
        queue_h[:, c, int(ptr[c])] = hn_k[i]            # the per-sample enqueue inside TLlib's loop
        queue_z[:, c, int(ptr[c])] = z_k[i]
        ptr[c] = (int(ptr[c]) + 1) % K
    W, b = q.head.weight.data, q.head.bias.data
    proto = [torch.cat([W[c], b[c:c + 1]]) / torch.cat([W[c], b[c:c + 1]]).norm() for c in range(C)]
    rows_y = []
    for i in range(B):
        c = int(labels[i])
        row = [hn_q[i] @ proto[c]]
        row += [queue_h[:, c, j] @ proto[c] for j in range(K)]
        row += [queue_h[:, c2, j] @ proto[c] for c2 in range(C) if c2 != c for j in range(K)]
        rows_y.append(torch.stack(row))

    def kl_batchmean(rows):
        total = 0.0
        for row in rows:
            logp = torch.log_softmax(row / T, 0)
            pi = 1.0 / (K + 1)
            total = total + sum(pi * (np.log(pi) - logp[j]) for j in range(K + 1))   # π_j = 0 elsewhere
        return total / len(rows)

    loss_z, loss_y = kl_batchmean(rows_z), kl_batchmean(rows_y)
    cls = F.cross_entropy(y_q, labels)
    return cls + trade_off * (loss_z + loss_y), loss_z, loss_y, queue_h, queue_z, ptr


@pytest.mark.parametrize("labels", [[2, 0, 2, 1, 3, 2, 0], [2, 2, 0, 2, 2, 1, 2]])   # the second wraps past K
def test_bi_tuning_step_matches_a_loop_transcription_of_tllib(labels):
    K, mom, T, lam = 3, 0.9, 0.07, 0.7
    m = _method("bi_tuning", num_classes=4, K=K, m=mom, T=T, trade_off=lam, projection_dim=8)
    m.queue_ptr.copy_(torch.tensor([1, 0, 2, 0]))
    ref = copy.deepcopy(m)
    labels = torch.tensor(labels)
    x_q, x_k = _images(B=len(labels), n=2)
    out = m.training_step([x_q, x_k], labels, 0)
    want, lz, ly, qh, qz, ptr = _bituning_reference(ref, x_q, x_k, labels, K, mom, T, lam)
    assert out["contrast_z"] == pytest.approx(lz.item(), abs=1e-5)
    assert out["contrast_y"] == pytest.approx(ly.item(), abs=1e-5)
    assert out["loss"].item() == pytest.approx(want.item(), abs=1e-5)
    assert torch.equal(m.queue_ptr, ptr)
    assert torch.allclose(m.queue_h, qh, atol=1e-5) and torch.allclose(m.queue_z, qz, atol=1e-5)
    for a, b in zip(m.encoder_k.parameters(), ref.encoder_k.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # same gradients: the prototypes are detached (the classifier contrast reaches only the backbone)
    out["loss"].backward()
    want.backward()
    for (name, a), b in zip(m.encoder_q.named_parameters(), ref.encoder_q.parameters()):
        if a.grad is not None or b.grad is not None:
            assert (a.grad - b.grad).norm() <= 1e-4 * b.grad.norm() + 1e-7, name
    assert all(p.grad is None for p in m.encoder_k.parameters())


def test_bi_tuning_groups_heads_and_state():
    m = _method("bi_tuning", K=4, projection_dim=16)
    assert [g["lr"] for g in m.param_groups(0.01, 0.2)] == pytest.approx([0.002, 0.01, 0.001])
    assert m.queue_h.shape == (513, 5, 4) and m.queue_z.shape == (16, 5, 4)
    assert torch.allclose(m.queue_h.norm(dim=0), torch.ones(5, 4), atol=1e-5)
    assert {"queue_h", "queue_z", "queue_ptr"} <= set(dict(m.named_buffers()))
    head = m.encoder_q.head
    assert head.bias.abs().sum() == 0 and head.weight.std().item() == pytest.approx(0.01, rel=0.1)
    m.eval()
    x = _images(B=2)[0]
    heads = m.heads(x)
    assert set(heads) == {"main"} and heads["main"].shape == (2, 5)
    m.train()
    assert m.encoder_k.training


# ---- through the engine ---------------------------------------------------------------------------

SMALL_ARGS = {"bi_tuning": {"K": 4}}


def _config(tmp_path, method, **kw):
    base = dict(method=method, method_args=SMALL_ARGS.get(method, {}), dataset="demo", sample_rate=15,
                backbone="resnet18", pretrained=False, image_size=64, batch_size=8, epochs=2, iters_per_epoch=2,
                milestones=(1,), results_dir=str(tmp_path), progress=False, keep_checkpoint="full")
    return RunConfig(**{**base, **kw})


@pytest.fixture
def small_test_split(monkeypatch):
    """A tenth of the demo test split: the tests are about training and resuming."""
    real = run_mod.build_dataset

    def build(name, root=None, split="train", *a, **k):
        ds = real(name, root, split, *a, **k)
        return ds.subset(range(0, len(ds), 10)) if split == "test" else ds
    monkeypatch.setattr(run_mod, "build_dataset", build)


@pytest.mark.parametrize("method", BASELINES)
def test_killed_run_resumes_to_the_same_record(tmp_path, method, small_test_split):
    full = fit(_config(tmp_path / "a", method))
    cfg = _config(tmp_path / "b", method)
    assert fit(cfg, stop_after_epoch=1) is None
    resumed = fit(cfg)
    strip = lambda r: {k: r[k] for k in ("history", "final", "config_hash")}   # noqa: E731
    assert json.dumps(strip(resumed), sort_keys=True) == json.dumps(strip(full), sort_keys=True)
    lrs = full["history"][0]["lr"]
    assert lrs == pytest.approx({"linear_probe": [0.01], "scratch": [0.01, 0.01],
                                 "bi_tuning": [0.001, 0.01, 0.001]}.get(method, [0.001, 0.01]))
    assert set(full["history"][0]["test"]) == {"main"}
    if method == "bi_tuning":      # queues and pointers were restored too
        a = torch.load(run_dir(_config(tmp_path / "a", method)) / "checkpoint.pt", weights_only=False)["method"]
        b = torch.load(run_dir(cfg) / "checkpoint.pt", weights_only=False)["method"]
        for key in ("queue_h", "queue_z", "queue_ptr"):
            assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("method", ["linear_probe", "l2_sp", "bss", "stochnorm", "bi_tuning"])
def test_short_run_from_pretrained_weights_lowers_the_loss(method):
    """30 steps from ImageNet-pretrained EfficientNet-Lite0 on the embedded data: the cross-entropy goes
    down (for Bi-Tuning the contrastive terms start from random queues, so only CE is compared).
    Scratch is left out: 30 steps from random weights say nothing."""
    losses = short_run_losses(method, {"K": 4, "m": 0.99} if method == "bi_tuning" else {}, "cls",
                              weight_decay=0.0 if method == "l2_sp" else 5e-4)
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.9 * first, (first, last, losses)
