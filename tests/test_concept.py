"""ctlib's concept parts against plain reference formulations (tests/reference_impl.py)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ctlib.concept import (ClassQueues, FrontDoorHead, PatchGeometry, concept_contrastive_loss, concept_logits,
                           crop_patches, embed_patches, ib_kl, image_contrastive_loss, search_patches, select_costs,
                           sinkhorn_log)
from ctlib.concept.frontdoor import ChannelAttention, PositionAttention
from reference_impl import (cam_naive, concept_logits_loop, enqueue_loop, image_logits_loop, kl_loss_reference,
                            pam_naive, search_patches_loop, sinkhorn_reference)


def _rand_search_inputs(B, D, H, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, H, H, generator=g), torch.randn(B, C, generator=g),
            torch.randint(0, C, (B,), generator=g), torch.randn(C, D, generator=g))


def test_geometry_reference_numbers_at_resnet50_224():
    g = PatchGeometry.derive(2048, 224, 32)
    assert (g.num_patches, g.slice_width, g.slice_stride, g.box_size) == (9, 30, 250, 64)
    assert g.slice_starts == [0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000]


def test_geometry_scales_with_channels_and_size():
    g = PatchGeometry.derive(512, 112, 32)
    assert (g.slice_width, g.slice_stride, g.box_size) == (8, 62, 32)
    assert g.slice_starts[-1] + g.slice_width <= 512
    with pytest.raises(ValueError, match="channels"):
        PatchGeometry.derive(64, 224, 32, slice_width=30, slice_stride=250)
    with pytest.raises(ValueError, match="anchor"):
        PatchGeometry.derive(2048, 224, 32, anchor="middle")


@pytest.mark.parametrize("D,H,img,conf", [(2048, 7, 224, 11), (512, 4, 128, 3)])
def test_search_patches_matches_per_sample_loop(D, H, img, conf):
    fmap, logits, labels, W = _rand_search_inputs(5, D, H, 12)
    geo = PatchGeometry.derive(D, img, 32)
    got = search_patches(fmap, logits, labels, W, geo, conf, (img, img))
    boxes, confs = search_patches_loop(fmap, logits, labels, W, conf, geo.num_patches, geo.slice_width,
                                       geo.slice_stride, 32, geo.box_size, img)
    assert torch.equal(got.confusing, confs)
    assert torch.equal(got.boxes, boxes)
    assert not (got.confusing == labels[:, None]).any()


def test_box_anchor_center_shifts_by_half_stride():
    fmap, logits, labels, W = _rand_search_inputs(3, 2048, 7, 10)
    corner = search_patches(fmap, logits, labels, W, PatchGeometry.derive(2048, 224, 32), 5, (224, 224))
    center = search_patches(fmap, logits, labels, W, PatchGeometry.derive(2048, 224, 32, anchor="center"), 5,
                            (224, 224))
    unclipped = lambda b: (b[..., 2] - b[..., 0] == 64) & (b[..., 3] - b[..., 1] == 64)
    both = unclipped(corner.boxes) & unclipped(center.boxes)
    assert both.any()
    assert torch.equal(center.boxes[both] - corner.boxes[both], torch.full_like(corner.boxes[both], 16.0))


def test_crops_equal_pixels_for_interior_boxes():
    img = torch.randn(2, 3, 64, 64)
    geo = PatchGeometry.derive(2048, 64, 32, box_size=16)
    boxes = torch.tensor([[[8., 4., 24., 20.]], [[40., 32., 56., 48.]]])
    crops = crop_patches(img, boxes, geo)
    assert crops.shape == (2, 1, 3, 16, 16)
    assert torch.allclose(crops[0, 0], img[0, :, 4:20, 8:24], atol=1e-6)
    assert torch.allclose(crops[1, 0], img[1, :, 32:48, 40:56], atol=1e-6)


def _tiny_encoder(D=16, C=6):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, D, 3, 2, 1), nn.BatchNorm2d(D), nn.ReLU())
    head = nn.Linear(D, C)
    return body, head


def test_embed_patches_batched_equals_per_slot_in_eval_and_is_normalised():
    body, head = _tiny_encoder()
    body.eval()
    crops = torch.randn(3, 4, 3, 8, 8)
    feat = lambda x: body(x).mean((2, 3))
    a = embed_patches(feat, head.weight, head.bias, crops, "batched")
    b = embed_patches(feat, head.weight, head.bias, crops, "per_slot")
    assert a.shape == (3, 4, 6)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a.norm(dim=-1), torch.ones(3, 4), atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, 0.0, None])
def test_grouped_patch_forward_equals_per_slot_in_training_mode(momentum):
    """One forward with per-slot BN statistics = the reference's one forward per slot: embeddings,
    gradients, running statistics and num_batches_tracked (momentum 0.1, 0 as fix_bn, None cumulative)."""
    body, head = _tiny_encoder()
    body.add_module("conv2", nn.Conv2d(16, 16, 3, 1, 1))
    body.add_module("bn2", nn.BatchNorm2d(16, momentum=momentum))
    body[1].momentum = momentum
    body2 = copy.deepcopy(body)
    crops = torch.randn(5, 9, 3, 8, 8)
    a = embed_patches(lambda x: body(x).mean((2, 3)), head.weight, head.bias, crops, "grouped", body)
    b = embed_patches(lambda x: body2(x).mean((2, 3)), head.weight, head.bias, crops, "per_slot")
    c = embed_patches(lambda x: copy.deepcopy(body)(x).mean((2, 3)), head.weight, head.bias, crops, "batched")
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - c).abs().max() > 1e-3                     # statistics over all crops differ
    w = torch.randn_like(a)
    (a * w).sum().backward()
    (b * w).sum().backward()
    for p1, p2 in zip(body.parameters(), body2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-5, rtol=1e-4)
    for (n1, b1), (_, b2) in zip(body.named_buffers(), body2.named_buffers()):
        assert torch.allclose(b1.float(), b2.float(), atol=1e-6), n1
    assert int(body[1].num_batches_tracked) == 9
    assert not any("forward" in vars(m) for m in body.modules())    # BN layers restored afterwards


def test_grouped_patch_forward_in_eval_mode_uses_running_stats():
    body, head = _tiny_encoder()
    body.eval()
    crops = torch.randn(3, 4, 3, 8, 8)
    a = embed_patches(lambda x: body(x).mean((2, 3)), head.weight, head.bias, crops, "grouped", body)
    b = embed_patches(lambda x: body(x).mean((2, 3)), head.weight, head.bias, crops, "batched")
    assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="patch_forward"):
        embed_patches(lambda x: body(x).mean((2, 3)), head.weight, head.bias, crops, "loop")


def test_embed_patches_gradient_reaches_encoder_not_head():
    body, head = _tiny_encoder()
    e = embed_patches(lambda x: body(x).mean((2, 3)), head.weight, head.bias, torch.randn(2, 9, 3, 8, 8),
                      module=body)
    e.sum().backward()
    assert body[0].weight.grad is not None and body[0].weight.grad.abs().sum() > 0
    assert head.weight.grad is None and head.bias.grad is None


def _sets(n, P=9, D=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, P, D, generator=g), dim=-1)


def test_sinkhorn_groups_equal_separate_reference_calls():
    x1, y1 = _sets(1, seed=1), _sets(7, seed=2)     # one query set vs 7 sets (a reference 'pos' call)
    x2, y2 = _sets(5, seed=3), _sets(5, seed=4)     # 5 pairs in one call
    C1, pi1 = sinkhorn_reference(x1, y1)
    C2, pi2 = sinkhorn_reference(x2, y2)
    groups = torch.tensor([0] * 7 + [1] * 5)
    plan, _ = sinkhorn_log(torch.cat([C1, C2]), groups=groups)
    assert torch.allclose(plan[:7], pi1, atol=1e-6, rtol=1e-4)
    assert torch.allclose(plan[7:], pi2, atol=1e-6, rtol=1e-4)
    assert torch.allclose(plan.sum((1, 2)), torch.ones(12), atol=1e-3)


def test_select_costs_modes():
    cost = torch.rand(4, 9, 9, requires_grad=True)
    plan = torch.rand(4, 9, 9)
    top3 = plan.reshape(4, -1).topk(3, 1).indices
    one = select_costs(cost, plan, 3, pick_one=True, generator=torch.Generator().manual_seed(0))
    assert one.shape == (4, 1)
    for i in range(4):
        assert one[i, 0].item() in cost.reshape(4, -1)[i, top3[i]].tolist()
    ten = select_costs(cost, plan, 10, pick_one=False)
    assert torch.equal(ten, cost.reshape(4, -1).gather(1, plan.reshape(4, -1).topk(10, 1).indices))
    ten.sum().backward()
    assert (cost.grad != 0).sum() == 40


def _concept_case():
    B, P, D, C, K = 3, 9, 10, 6, 4
    e_q, e_k = _sets(B, P, D, 1), _sets(B, P, D, 2)
    queue_h = F.normalize(torch.randn(C, K, P, D, generator=torch.Generator().manual_seed(3)), dim=-1)
    return e_q, e_k, queue_h, torch.tensor([0, 2, 2]), torch.tensor([[1, 2, 3], [0, 5, 4], [3, 1, 0]])


def test_concept_logits_match_per_sample_reference():
    # eps 0.5: smooth plans, so the top-10 plan entries of every pair are well separated
    e_q, e_k, queue_h, labels, conf = _concept_case()
    got, _ = concept_logits(e_q, e_k, queue_h, labels, conf, eps=0.5, pos_top=1)
    ref = concept_logits_loop(e_q, e_k, queue_h, labels, conf, eps=0.5)
    assert got.shape == (3, 1 + 4 + 10 * 3 * 4)
    assert torch.allclose(got, ref, atol=1e-5)


def test_concept_logits_match_reference_at_eps_001_where_the_plan_is_unambiguous():
    # at the reference eps 0.01 a plan is close to a permutation: its 9 large entries are well defined,
    # the 10th largest is a near-zero entry whose rank depends on rounding (in the reference too)
    e_q, e_k, queue_h, labels, conf = _concept_case()
    got, _ = concept_logits(e_q, e_k, queue_h, labels, conf, pos_top=1)
    ref = concept_logits_loop(e_q, e_k, queue_h, labels, conf)
    assert torch.allclose(got[:, :5], ref[:, :5], atol=1e-5)                  # current and positive pairs
    top9 = lambda x: x[:, 5:].reshape(3, -1, 10)[..., :9].sort(-1).values  # negatives: the 9 matched pairs
    assert torch.allclose(top9(got), top9(ref), atol=1e-5)


def test_concept_logits_positive_pick_is_among_top3():
    B, P, D, C, K = 2, 9, 8, 5, 3
    e_q, e_k = _sets(B, P, D, 5), _sets(B, P, D, 6)
    queue_h = F.normalize(torch.randn(C, K, P, D), dim=-1)
    labels, conf = torch.tensor([1, 4]), torch.tensor([[0, 2, 3], [0, 1, 2]])
    got, _ = concept_logits(e_q, e_k, queue_h, labels, conf)
    for i in range(B):
        C_, pi = sinkhorn_reference(e_q[i:i + 1], queue_h[labels[i]])
        cand = C_.reshape(K, -1).gather(1, pi.reshape(K, -1).topk(3, 1).indices)
        for k in range(K):
            assert torch.isclose(1 - got[i, 1 + k], cand[k], atol=1e-5).any()


def test_concept_loss_matches_kldiv_and_gradient_reaches_query_only():
    B, P, D, C, K = 3, 9, 8, 5, 4
    e_q = _sets(B, P, D, 7).requires_grad_()
    e_k = _sets(B, P, D, 8).requires_grad_()
    queue_h = F.normalize(torch.randn(C, K, P, D), dim=-1)
    logits, _ = concept_logits(e_q, e_k, queue_h, torch.tensor([0, 1, 2]), torch.tensor([[1, 2, 3]] * 3))
    loss = concept_contrastive_loss(logits, K, 0.07)
    assert torch.allclose(loss, kl_loss_reference(logits, 0.07, K), atol=1e-5)
    loss.backward()
    assert e_q.grad.abs().sum() > 0 and e_k.grad is None


def test_image_contrastive_loss_matches_reference_loop():
    B, C, K = 5, 7, 4
    g = torch.Generator().manual_seed(0)
    z_q = F.normalize(torch.randn(B, C, generator=g), dim=1)
    z_k = F.normalize(torch.randn(B, C, generator=g), dim=1)
    queue_z = F.normalize(torch.randn(C, C, K, generator=g), dim=0)
    labels = torch.tensor([0, 3, 3, 6, 1])
    ref = kl_loss_reference(image_logits_loop(z_q, z_k, queue_z, labels), 0.07, K)
    assert torch.allclose(image_contrastive_loss(z_q, z_k, queue_z, labels, 0.07), ref, atol=1e-5)


@pytest.mark.parametrize("labels", [[0, 1, 1, 2, 1], [3, 3, 3, 3, 3, 3, 3, 0]])   # the second wraps past K
def test_enqueue_equals_sample_by_sample_reference(labels):
    C, K, P, D = 4, 3, 2, 5
    labels = torch.tensor(labels)
    q = ClassQueues(C, K, D, P)
    q.ptr[:] = torch.tensor([2, 0, 1, 1])
    ref_z, ref_h, ref_ptr = q.queue_z.clone(), q.queue_h.clone(), q.ptr.clone()
    z, h = torch.randn(len(labels), D), torch.randn(len(labels), P, D)
    enqueue_loop(ref_z, ref_h, ref_ptr, z, h, labels, K)
    q.enqueue(z, h, labels)
    assert torch.equal(q.queue_z, ref_z) and torch.equal(q.queue_h, ref_h) and torch.equal(q.ptr, ref_ptr)


def test_queues_are_buffers_and_normalised():
    q = ClassQueues(5, 4, 5, 9)
    names = dict(q.named_buffers())
    assert names["queue_z"].shape == (5, 5, 4) and names["queue_h"].shape == (5, 4, 9, 5)
    assert torch.allclose(q.queue_z.norm(dim=0), torch.ones(5, 4), atol=1e-5)
    assert torch.allclose(q.queue_h.norm(dim=-1), torch.ones(5, 4, 9), atol=1e-5)
    assert not list(q.parameters())


@pytest.mark.parametrize("fused", [True, False])
def test_position_and_channel_attention_match_naive_loops(fused):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 3, 3)
    pam, cam = PositionAttention(16), ChannelAttention(fused=fused)
    with torch.no_grad():
        pam.gamma.fill_(0.7)
        cam.gamma.fill_(-0.3)
        assert torch.allclose(pam(x), pam_naive(x, pam.query, pam.key, pam.value, 0.7), atol=1e-5)
        assert torch.allclose(cam(x), cam_naive(x, -0.3), atol=1e-5)


def test_fused_channel_attention_matches_reference_form_with_gradients():
    torch.manual_seed(0)
    x = (3 * torch.randn(2, 64, 4, 4)).requires_grad_()    # large energies: a near-argmax softmax
    outs, grads = [], []
    for fused in (True, False):
        cam = ChannelAttention(fused=fused)
        with torch.no_grad():
            cam.gamma.fill_(0.5)
        out = cam(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append((x.grad.clone(), cam.gamma.grad.clone()))
        x.grad = None
    assert torch.allclose(outs[0], outs[1], atol=1e-4, rtol=1e-4)
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-3, rtol=1e-3)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("aggregation", ["sum", "concat"])
@pytest.mark.parametrize("attention,fused", [("both", True), ("both", False), ("position", True)])
def test_pooled_position_attention_equals_mean_of_attended_map_with_gradients(aggregation, attention, fused):
    """pooled_position_attention computes the position attention's spatial mean without its map: the same
    logits, μ, σ and gradients (input, every parameter) as the reference's map-then-mean, in float64."""
    torch.manual_seed(0)
    x = (2 * torch.randn(3, 32, 4, 5, dtype=torch.float64)).requires_grad_()
    heads = [FrontDoorHead(32, 6, 4, aggregation, False, fused, attention, True, pooled).double()
             for pooled in (True, False)]
    heads[1].load_state_dict(heads[0].state_dict())
    results = []
    for head in heads:
        with torch.no_grad():
            for m in (head.pam, head.cam):
                if m is not None:
                    m.gamma.fill_(0.6)                 # γ = 0 (the start) would hide the attention
        torch.manual_seed(1)                           # the same IB noise ε
        logits, mu, sigma = head(x)
        (logits * torch.linspace(-1, 1, logits.numel(), dtype=torch.float64).view_as(logits)).sum().backward()
        results.append([logits.detach(), mu.detach(), sigma.detach(), x.grad.clone()]
                       + [p.grad.clone() for p in head.parameters()])
        x.grad = None
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert results[0][-1].abs().max() > 0          # the decoder's gradient: the check is not vacuous


def test_frontdoor_starts_as_identity_attention_and_aggregates():
    x = torch.randn(2, 16, 3, 3)
    head = FrontDoorHead(16, 5, ib_dim=4)
    assert torch.equal(head.attend(x), 2 * x)                 # gammas start at 0: CAM(x) + PAM(x) = 2x
    cat = FrontDoorHead(16, 5, ib_dim=4, aggregation="concat")
    assert cat.attend(x).shape == (2, 32, 3, 3) and cat.encoder.in_features == 32
    with pytest.raises(ValueError, match="aggregation"):
        FrontDoorHead(16, 5, aggregation="mean")


def test_frontdoor_ib_sampling_and_eval_modes():
    torch.manual_seed(0)
    head = FrontDoorHead(8, 3, ib_dim=4)
    x = torch.randn(5, 8, 2, 2)
    logits, mu, sigma = head(x)
    assert torch.allclose(sigma, F.softplus(head.encoder(head.attend(x).mean((2, 3)))[:, 4:] - 5))
    head.eval()
    assert torch.equal(head(x)[0], head.decoder(mu))          # evaluation uses mu
    assert torch.equal(head(x)[0], head(x)[0])
    head.eval_sample = True                                   # reference: samples at evaluation too
    assert not torch.equal(head(x)[0], head(x)[0])


def test_ib_kl_forms_match_torch_distributions():
    from torch.distributions import Independent, Normal, kl_divergence
    mu, sigma = torch.randn(6, 4), F.softplus(torch.randn(6, 4) - 1)
    prior = Independent(Normal(torch.zeros_like(mu), torch.ones_like(sigma)), 1)
    code = kl_divergence(Independent(Normal(mu, torch.exp(sigma)), 1), prior).mean()
    textbook = kl_divergence(Independent(Normal(mu, sigma), 1), prior).mean()
    assert torch.allclose(ib_kl(mu, sigma, "code"), code, atol=1e-5)
    assert torch.allclose(ib_kl(mu, sigma, "textbook"), textbook, atol=1e-5)
