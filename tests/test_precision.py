"""Run settings channels_last and amp (ctlib.engine.precision), the fast concept mode, and the Sinkhorn
solver's setting aside of finished pairs: same numbers where they promise it, clear errors otherwise."""
import copy

import pytest
import torch

from ctlib.concept import PatchGeometry, pool_patches, sinkhorn_log, slot_batchnorm
from ctlib.engine import RunConfig, fit, run_dir
from ctlib.engine.precision import Precision, resolve_amp, resolve_channels_last, train_step
from ctlib.methods import build_method
from ctlib.models import build_backbone


# ---------------------------------------------------------------------------------------------- settings

def test_auto_settings_resolve_per_device():
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_channels_last("auto", cpu) and resolve_channels_last("auto", cuda)
    assert not resolve_channels_last("auto", mps)
    assert not resolve_channels_last(False, cpu) and resolve_channels_last(True, mps)
    assert resolve_amp("auto", cpu) == "off" and resolve_amp("bf16", cpu) == "bf16"
    p = Precision.resolve(False, "off", "cpu")
    assert p.faithful and p.describe() == {"channels_last": False, "amp": "off"} and p.scaler is None
    assert Precision.resolve("auto", "fp16", "cpu").scaler is not None


@pytest.mark.parametrize("key, value", [("channels_last", "yes"), ("channels_last", 1), ("amp", "fp32"),
                                        ("amp", None)])
def test_bad_precision_settings_name_the_choices(key, value):
    with pytest.raises(ValueError, match=key + ".*one of"):
        RunConfig(**{key: value})


def test_precision_settings_are_part_of_the_runs_identity():
    a = RunConfig()
    assert a.hash() != a.replace(channels_last=False).hash() != a.replace(amp="off").hash()


# ---------------------------------------------------------------------------------------------- layout

def test_grouped_batchnorm_keeps_channels_last_and_its_numbers():
    bn = torch.nn.BatchNorm2d(5).train()
    with torch.no_grad():
        bn.weight.uniform_()
        bn.bias.uniform_()
    ref = copy.deepcopy(bn)
    x = torch.randn(3 * 4, 5, 6, 7)
    xa = x.clone().requires_grad_()
    xb = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    with slot_batchnorm(ref, 3):
        ya = ref(xa)
    with slot_batchnorm(bn, 3):
        yb = bn(xb)
    assert yb.is_contiguous(memory_format=torch.channels_last) and not yb.is_contiguous()
    torch.testing.assert_close(yb, ya)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad)


def _step(method, precision, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(method.param_groups(0.01, 0.1), lr=0.01, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(6, 3, 64, 64, generator=g).to(dtype) for _ in method.view_kinds]
    labels = torch.tensor([0, 1, 1, 2, 3, 4])
    loss, out = train_step(method, opt, precision, views, labels, 0)
    precision.step(opt)
    return loss.item(), out


@pytest.mark.parametrize("method", ["erm", "concept_tuning", "bi_tuning"])
def test_channels_last_step_equals_the_contiguous_step(method):
    """The same step in another summation order: in float64 (where rounding cannot hide a real difference)
    a step with channels-last inputs gives the contiguous step's losses and updated weights to 1e-9. (In
    float32, rounding amplified by batch-norm over few values moves some gradients by ~1e-3 relative.)"""
    torch.manual_seed(0)
    args = {"confusing": 3, "K": 2, "ib_dim": 16} if method == "concept_tuning" else {}
    if method == "bi_tuning":
        args = {"K": 2}
    a = build_method(method, build_backbone("resnet18", False), 6, 64, args).train().double()
    b = copy.deepcopy(a)
    la, outa = _step(a, Precision.resolve(False, "off", "cpu"), dtype=torch.float64)
    lb, outb = _step(b, Precision.resolve(True, "off", "cpu"), dtype=torch.float64)
    assert lb == pytest.approx(la, rel=1e-9)
    for k, v in outa.items():
        assert outb[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-9, atol=1e-12, msg=name)


def test_evaluation_in_channels_last_predicts_the_same(tmp_path):
    from ctlib.data import build_dataset, eval_view
    from ctlib.engine.evaluate import evaluate

    bb = build_backbone("resnet18", False)
    method = build_method("erm", bb, 10, 64, {})
    ds = build_dataset("demo", None, "test", 100).with_transform(eval_view(64, bb.mean, bb.std))
    ds = torch.utils.data.Subset(ds, range(40))
    ds.num_classes = 10
    keep_a, keep_b = {}, {}
    evaluate(method, ds, "cpu", 20, predictions=keep_a, precision=Precision.resolve(False, "off", "cpu"))
    evaluate(method, ds, "cpu", 20, predictions=keep_b, precision=Precision.resolve(True, "off", "cpu"))
    assert torch.equal(keep_a["main"], keep_b["main"])


# ---------------------------------------------------------------------------------------------- mixed precision

def test_bf16_autocast_step_keeps_the_transport_in_float32():
    torch.manual_seed(0)
    ct = build_method("concept_tuning", build_backbone("resnet18", False), 6, 64,
                      {"confusing": 3, "K": 2, "ib_dim": 16}).train()
    seen = {}
    import ctlib.methods.concept_tuning as ct_module
    real = ct_module.concept_logits

    def spy(e_q, e_k, *rest, **kw):
        seen["dtypes"] = (e_q.dtype, e_k.dtype, torch.is_autocast_enabled("cpu"))
        return real(e_q, e_k, *rest, **kw)

    ct_module.concept_logits = spy
    try:
        loss, out = _step(ct, Precision.resolve(True, "bf16", "cpu"))
    finally:
        ct_module.concept_logits = real
    assert seen["dtypes"] == (torch.float32, torch.float32, False)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values()) and torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == torch.float32 for p in ct.parameters())           # weights stay float32


def test_fp16_run_resumes_with_its_gradient_scaler(tmp_path):
    """amp="fp16" (on the CPU here; on CUDA in practice): the gradient scaler's state is checkpointed, and a
    killed run resumes to the same record."""
    base = dict(method="erm", dataset="demo",
                sample_rate=15, backbone="resnet18", pretrained=False, image_size=32, batch_size=8, epochs=2,
                iters_per_epoch=2, milestones=(1,), progress=False, keep_checkpoint="full", amp="fp16",
                eval_batch_size=500)        # float16 convolutions are slow on CPUs: small images
    full = fit(RunConfig(**base, results_dir=str(tmp_path / "a")))
    assert full["precision"] == {"channels_last": True, "amp": "fp16"}
    cfg = RunConfig(**base, results_dir=str(tmp_path / "b"))
    assert fit(cfg, stop_after_epoch=1) is None
    state = torch.load(run_dir(cfg) / "checkpoint.pt", weights_only=False)
    assert state["grad_scaler"]["scale"] > 0
    resumed = fit(cfg)
    assert resumed["history"] == full["history"]


def test_concept_backward_goes_through_the_scaler():
    torch.manual_seed(0)
    ct = build_method("concept_tuning", build_backbone("resnet18", False), 6, 64,
                      {"confusing": 3, "K": 2, "ib_dim": 16}).train()
    precision = Precision.resolve(False, "fp16", "cpu")
    calls = []
    real = precision.backward
    precision.backward = lambda loss: (calls.append(loss.item()), real(loss))
    _step(ct, precision)
    assert len(calls) == 2          # the concept loss inside the step, then the rest


# ---------------------------------------------------------------------------------------------- fast concept mode

def test_pool_patches_averages_the_cells_under_a_box():
    fmap = torch.randn(2, 5, 7, 7)
    geo = PatchGeometry(num_patches=2, slice_width=1, slice_stride=1, box_size=64, feature_stride=32)
    boxes = torch.tensor([[[0, 0, 64, 64], [96, 64, 160, 128]]] * 2, dtype=torch.float)
    pooled = pool_patches(fmap, boxes, geo)
    # aligned RoI-align: a 64-px box on a stride-32 map samples the centres of exactly 2×2 cells
    torch.testing.assert_close(pooled[:, 0], fmap[:, :, 0:2, 0:2].mean((2, 3)))
    torch.testing.assert_close(pooled[:, 1], fmap[:, :, 2:4, 3:5].mean((2, 3)))


def _fast(**kw):
    torch.manual_seed(0)
    return build_method("concept_tuning", build_backbone("resnet18", False), 6, 64,
                        {"confusing": 3, "K": 2, "ib_dim": 16, "concept_features": "feature_map", **kw}).train()


def test_fast_mode_uses_two_views_and_trains_the_backbone_through_the_concept_loss():
    ct = _fast()
    assert ct.view_kinds == ("image", "image")
    assert "FAST CONCEPT MODE" in ct.protocol_note() and "not the paper's method" in ct.protocol_note()
    grads = {}
    for beta in (0.0, 1.0):
        m = _fast(beta=beta)
        before = m.queues.queue_h.clone()
        _, out = _step(m, Precision.resolve(True, "off", "cpu"))
        assert out["concept"] > 0 and out["sinkhorn_iters"] >= 1
        grads[beta] = m.encoder_q.backbone.body.layer3[0].conv1.weight.clone()
        written = (m.queues.queue_h != before).any(-1).any(-1).sum().item()
        assert written == 6                 # every sample's key patch set was enqueued (K=2 slots per class)
    assert not torch.equal(grads[0.0], grads[1.0])


def test_fast_mode_is_labelled_apart_from_the_papers_method_in_tables(tmp_path):
    from ctlib.tables import FAST_MODE_LABEL, method_label

    assert method_label("concept_tuning", {"concept_features": "feature_map"}) == FAST_MODE_LABEL
    assert method_label("concept_tuning", {"concept_features": "crops"}) == "concept_tuning"
    assert method_label("erm", {}) == "erm"


def test_bad_concept_features_names_the_choices():
    with pytest.raises(ValueError, match="concept_features.*crops.*feature_map"):
        _fast(concept_features="roi")


# ---------------------------------------------------------------------------------------------- Sinkhorn

def test_setting_finished_pairs_aside_changes_no_plan():
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(300, 9, 8), dim=-1)
    f = torch.nn.functional.normalize(torch.randn(300, 9, 8), dim=-1)
    cost = 1 - e @ f.transpose(1, 2)
    cost[:100] *= 0.05                   # groups that converge at very different iterations
    groups = torch.arange(300) // 50
    every, it_every = sinkhorn_log(cost, 0.01, 200, 1e-3, groups, check_every=1)
    never, it_never = sinkhorn_log(cost, 0.01, 200, 1e-3, groups, check_every=10_000)
    assert it_every < it_never == 200
    # the same iterates; fewer pairs per tensor may only change the order of a reduction's terms (rounding)
    torch.testing.assert_close(every, never, rtol=0, atol=1e-6)
    assert torch.equal(every.flatten(1).topk(10).indices, never.flatten(1).topk(10).indices)
