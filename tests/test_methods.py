"""Concept-Tuning and ERM behind the method interface: errors, gradients, key encoder, queues, BN."""
import copy

import pytest
import torch
import torch.nn.functional as F

from ctlib.methods import build_method
from ctlib.models import build_backbone


def _ct(num_classes=6, size=64, **settings):
    torch.manual_seed(0)
    args = {"confusing": 3, "K": 4, "ib_dim": 16, **settings}
    return build_method("concept_tuning", build_backbone("resnet18", False), num_classes, size, args).train()


def _views(B=6, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, size, size, generator=g) for _ in range(4)]


@pytest.mark.parametrize("confusing, match", [(2, r"confusing=2 \(must be an integer >= 3\)"),  # the settings
                                               (6, r"3 <= confusing <= num_classes - 1 = 5"),     # at build
                                               (100, r"3 <= confusing <= num_classes - 1 = 5")])
def test_confusing_out_of_range_is_a_clear_error(confusing, match):
    with pytest.raises(ValueError, match=match):
        _ct(num_classes=6, confusing=confusing)


def test_unknown_setting_and_method_are_clear_errors():
    with pytest.raises(ValueError, match="unknown setting.*'Kq'.*valid settings"):
        _ct(Kq=3)
    with pytest.raises(ValueError, match="unknown method 'bogus'.*concept_tuning"):
        build_method("bogus", build_backbone("resnet18", False), 5, 64)


def test_gradients_reach_query_side_not_key_encoder():
    m = _ct()
    out = m.training_step(_views(), torch.tensor([0, 1, 2, 3, 4, 5]), epoch=0)
    out["loss"].backward()
    assert all(p.grad is None for p in m.encoder_k.parameters())
    for module in (m.encoder_q.backbone.body, m.encoder_q.head, m.frontdoor.encoder, m.frontdoor.decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    for key in ("cls", "img", "concept", "ib_cls", "ib_kl"):
        assert out[key] == out[key] and out[key] > 0


def test_concept_branch_alone_gives_head_no_gradient():
    # training_step back-propagates beta·L_concept itself; the returned rest is not back-propagated here
    m = _ct()
    m.training_step(_views(), torch.tensor([0, 1, 2, 3, 4, 5]), epoch=0)
    assert m.encoder_q.head.weight.grad is None
    assert m.encoder_q.backbone.body.conv1.weight.grad.abs().sum() > 0


def test_concept_loss_off_until_start_epoch():
    m = _ct(start_epoch=1)
    m.training_step(_views(), torch.tensor([0, 1, 2, 3, 4, 5]), epoch=1)
    assert m.encoder_q.backbone.body.conv1.weight.grad is None
    assert m.concept_weight(1) == 0.0 and m.concept_weight(2) == 1.0


def test_momentum_update_is_parameter_ema():
    m = _ct(m=0.9)
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(0.01)
    q = [p.detach().clone() for p in m.encoder_q.parameters()]
    k = [p.detach().clone() for p in m.encoder_k.parameters()]
    m.momentum_update()
    for pq, pk, new in zip(q, k, m.encoder_k.parameters()):
        assert torch.allclose(new, 0.9 * pk + 0.1 * pq, atol=1e-6)


def test_queues_hold_the_batch_keys_after_a_step():
    m = _ct()
    views, labels = _views(), torch.tensor([0, 1, 1, 3, 4, 5])
    ptr0 = m.queues.ptr.clone()
    m.training_step(views, labels, epoch=0)
    with torch.no_grad():   # key encoder in train mode: batch statistics, same outputs as in the step
        z_k = F.normalize(m.encoder_k(views[1])[0], dim=1)
    assert torch.equal(m.queues.ptr, (ptr0 + torch.bincount(labels, minlength=6)) % 4)
    assert torch.allclose(m.queues.queue_z[:, 1, 0], z_k[1], atol=1e-5)
    assert torch.allclose(m.queues.queue_z[:, 1, 1], z_k[2], atol=1e-5)
    assert torch.allclose(m.queues.queue_z[:, 5, 0], z_k[5], atol=1e-5)
    norms = m.queues.queue_h[labels, 0].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_query_patch_pass_leaves_bn_running_stats_and_momentum_alone():
    m = _ct()
    views = _views()
    ref = copy.deepcopy(m.encoder_q)
    with torch.no_grad():
        ref(views[0])                    # the only forward that may move running statistics
    m.training_step(views, torch.tensor([0, 1, 2, 3, 4, 5]), epoch=0)
    bn, bn_ref = m.encoder_q.backbone.body.bn1, ref.backbone.body.bn1
    assert torch.allclose(bn.running_mean, bn_ref.running_mean, atol=1e-6)
    assert bn.momentum == 0.1


def test_per_slot_patch_forward_option_runs():
    m = _ct(patch_forward="per_slot")
    out = m.training_step(_views(), torch.tensor([0, 1, 2, 3, 4, 5]), epoch=0)
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="patch_forward"):
        _ct(patch_forward="loop")


def test_heads_and_erm_interface():
    m = _ct()
    heads = m.heads(torch.randn(2, 3, 64, 64))
    assert set(heads) == {"main", "ib"} and heads["ib"].shape == (2, 6)
    erm = build_method("erm", build_backbone("resnet18", False), 6, 64)
    assert erm.view_kinds == ("image",) and set(erm.heads(torch.randn(2, 3, 64, 64))) == {"main"}
    groups = erm.param_groups(0.01, 0.1)
    assert [g["lr"] for g in groups] == [0.001, 0.01]


def test_no_cuda_calls_in_ctlib():
    from pathlib import Path
    import ctlib
    for path in Path(ctlib.__file__).parent.rglob("*.py"):
        assert ".cuda(" not in path.read_text(), path


def test_short_concept_tuning_run_lowers_its_loss():
    """30 steps from ImageNet-pretrained EfficientNet-Lite0 on the embedded data: the loss goes down."""
    from short_runs import short_run_losses

    losses = short_run_losses("concept_tuning", {"confusing": 9, "K": 8, "m": 0.99}, "total")
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.85 * first, (first, last, losses)
