"""A whole Concept-Tuning training step against the authors' code (tests/reference_step.py).

ctlib's step (batched search, grouped patch pass, batched Sinkhorn, two backward passes, vectorised
enqueue) and the transcription of the reference run side by side on two copies of one model, over
several SGD steps: loss parts, the gradient of every parameter, queue contents and pointers, and the
BatchNorm running statistics of both encoders must agree. Four plausible one-line slips in
ctlib/methods/concept_tuning.py are then applied to the real source and must each break the parity.
"""
import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import ctlib.concept.frontdoor as frontdoor
import ctlib.methods.concept_tuning as ct_module
from ctlib.methods import build_method
from ctlib.models import build_backbone
from reference_step import reference_step

NUM_CLASSES, BATCH, SIZE = 8, 6, 96
# Deterministic where the reference is random (see reference_step.py); Sinkhorn at eps 0.5, where the
# ten largest plan entries are well separated (at 0.01 the tenth is a near-zero entry whose rank is
# decided by rounding, in the reference as well).
SETTINGS = {"confusing": 4, "K": 3, "ib_dim": 16, "pos_top": 1, "sinkhorn_eps": 0.5}


def _models(method_cls=None, dtype=torch.float64, **settings):
    """ctlib's model and the reference's copy, in ``dtype``: float64 unless a test says otherwise, where
    rounding cannot hide a real difference and the tolerances are a million times tighter."""
    torch.manual_seed(0)
    args = {**SETTINGS, **settings}
    model = build_method("concept_tuning", build_backbone("resnet18", False), NUM_CLASSES, SIZE, args)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():             # a model mid-training: the query encoder has moved away from the key encoder
        for p in model.encoder_q.parameters():
            p.add_(0.2 * p.std() * torch.randn(p.shape, generator=g))
    if method_cls is not None:        # the same weights in a (mutated) class
        state = model.state_dict()
        model = method_cls(build_backbone("resnet18", False), NUM_CLASSES, SIZE, model.settings)
        model.load_state_dict(state)
    model = model.to(dtype)
    return model.train(), copy.deepcopy(model).train()


def _optimizer(model):
    return torch.optim.SGD(model.param_groups(0.01, 0.1), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _batch(step):
    g = torch.Generator().manual_seed(100 + step)
    views = [torch.randn(BATCH, 3, SIZE, SIZE, generator=g) for _ in range(4)]
    labels = torch.tensor([0, 1, 1, 2, 3, 5]) if step % 2 == 0 else torch.tensor([4, 4, 4, 4, 6, 7])
    return views, labels


def _compare(ours, ref, out, ref_out, step, tol=1.0):
    """Returns a list of mismatches (empty when the two models agree); ``tol`` scales every tolerance."""
    bad = []
    for k, v in ref_out.items():
        if abs(out[k] - v) > 1e-5 * tol * max(1.0, abs(v)):
            bad.append(f"step {step}: loss part {k}: ctlib {out[k]:.6f}, reference {v:.6f}")
    scale = max(p.grad.abs().max().item() for p in ref.parameters() if p.grad is not None)
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        g, g_ref = p.grad, p_ref.grad
        if (g is None) != (g_ref is None):
            bad.append(f"step {step}: gradient of {name}: {'none' if g is None else 'some'} vs reference")
        elif g is not None and not torch.allclose(g, g_ref, rtol=1e-3 * tol, atol=1e-5 * tol * scale):
            bad.append(f"step {step}: gradient of {name} differs by {(g - g_ref).abs().max().item():.2e}")
    for (name, b), b_ref in zip(ours.named_buffers(), ref.buffers()):
        if not torch.allclose(b.double(), b_ref.double(), rtol=1e-4 * tol, atol=1e-5 * tol):
            bad.append(f"step {step}: buffer {name} differs by {(b.double() - b_ref.double()).abs().max().item():.2e}")
    return bad


def _parity(ours, ref, steps=3, stop_early=False, channels_last=False):
    """ctlib trains ``steps`` SGD steps; before each, the reference copy takes ctlib's state (weights,
    queues, pointers, BN statistics) and both make the step from it. (Run freely side by side, the two
    trajectories drift apart: float rounding of order 1e-7 grows through batch-norm over few values.)
    ``channels_last``: ctlib gets its views as the run setting lays them out; the reference, contiguous.
    The views take the models' dtype; in float64 every tolerance is 1e-6 of float32's."""
    dtype = next(ours.parameters()).dtype
    tol = 1e-6 if dtype == torch.float64 else 1.0
    opt = _optimizer(ours)
    mismatches = []
    for step in range(steps):
        views, labels = _batch(step)
        ref.load_state_dict(ours.state_dict())
        opt.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        views = [v.to(dtype) for v in views]
        out = ours.training_step([v.clone().contiguous(memory_format=layout) for v in views], labels, epoch=0)
        out["loss"].backward()
        ref_out = reference_step(ref, [v.clone() for v in views], labels, epoch=0)
        mismatches += _compare(ours, ref, out, ref_out, step, tol)
        if mismatches and stop_early:
            break
        opt.step()
    return mismatches


@pytest.fixture(autouse=True)
def _no_ib_noise(monkeypatch):
    monkeypatch.setattr(frontdoor, "ib_noise", torch.zeros_like)


@pytest.mark.parametrize("m", [0.999, 0.5])
def test_training_step_matches_the_reference(m):
    ours, ref = _models(m=m)
    assert ours.settings.patch_forward == "grouped"          # the default is what is checked
    mismatches = _parity(ours, ref)
    assert not mismatches, "\n".join(mismatches[:20])


def test_float32_step_matches_the_reference_to_rounding():
    """The dtype of training, at float32 tolerances. (From a state where batch-norm over few values at
    this tiny size amplifies rounding, such as m=0.5 after two steps, some gradients move by ~1e-4
    relative, in whichever order of operations: the float64 tests above are the exact check.)"""
    ours, ref = _models(m=0.999, dtype=torch.float32)
    mismatches = _parity(ours, ref)
    assert not mismatches, "\n".join(mismatches[:20])


def test_channels_last_layout_matches_the_contiguous_reference():
    """The channels_last run setting (on by default) lays out inputs, feature maps and crops channels-last:
    the same step computed in another order. In float64, where rounding cannot hide a real difference, it
    must be the reference's step to float64's tolerances. (In float32 the two orders' rounding, amplified by
    batch-norm over few values at this tiny size, moves some gradients by ~1e-3 relative; in float64 the
    layouts agree to ~1e-13.)"""
    ours, ref = _models(m=0.5)
    assert not _parity(ours, ref, steps=2, channels_last=True)


def test_per_slot_patch_forward_matches_the_reference_too():
    ours, ref = _models(m=0.5, patch_forward="per_slot")
    assert not _parity(ours, ref, steps=2)


def test_batched_patch_forward_is_a_departure():
    ours, ref = _models(m=0.5, patch_forward="batched")
    mismatches = _parity(ours, ref, steps=1)
    print("\n".join(mismatches))
    assert any("concept" in m for m in mismatches) and any("running_mean" in m or "num_batches" in m for m in mismatches)


# one-line slips in the real source; each must break the parity
MUTATIONS = {
    "negatives from the key-side search": (
        "self.queues.queue_h, labels, search_q.confusing)", "self.queues.queue_h, labels, search_k.confusing)"),
    "query-side search after the momentum update": (
        "search_q = self._search(v2, labels)                  # key encoder before its update\n"
        "        if self.encoder_k is not None:\n"
        "            with torch.no_grad():\n"
        "                self.momentum_update()\n",
        "pass\n"
        "        if self.encoder_k is not None:\n"
        "            with torch.no_grad():\n"
        "                self.momentum_update()\n"
        "                search_q = self._search(v2, labels)\n"),
    "query patches from v3": (
        "e_q = self._embed(self.encoder_q, v2, search_q.boxes)", "e_q = self._embed(self.encoder_q, v3, search_q.boxes)"),
    "query patches through the key encoder's head": (
        "encoder.head.weight, encoder.head.bias,", "self.encoder_k.head.weight, self.encoder_k.head.bias,"),
}


def _mutant_class(old, new):
    source = Path(ct_module.__file__).read_text()
    assert source.count(old) == 1, f"mutation site {old!r} not found once in concept_tuning.py: update the test"
    spec = importlib.util.spec_from_loader("ctlib.methods._mutant", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "ctlib.methods"
    sys.modules[spec.name] = mod
    try:
        exec(compile(source.replace(old, new), ct_module.__file__, "exec"), mod.__dict__)
    finally:
        del sys.modules[spec.name]
    return mod.ConceptTuning


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_parity_catches_a_slip(mutation):
    ours, ref = _models(_mutant_class(*MUTATIONS[mutation]), m=0.5)
    assert _parity(ours, ref, stop_early=True), f"the parity test did not notice: {mutation}"
