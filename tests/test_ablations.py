"""Concept-Tuning's ablation switches: each removes its part (no parameters, no compute) and nothing else."""
import pytest
import torch

from ctlib.methods import build_method
from ctlib.models import build_backbone

LABELS = torch.tensor([0, 1, 2, 3, 4, 5])


def _ct(**settings):
    torch.manual_seed(0)
    args = {"confusing": 3, "K": 4, "ib_dim": 16, **settings}
    return build_method("concept_tuning", build_backbone("resnet18", False), 6, 64, args).train()


def _views(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 3, 64, 64, generator=g) for _ in range(4)]


def _count(module):
    return sum(p.numel() for p in module.parameters())


def _key_calls(m):
    calls = []
    if m.encoder_k is not None:
        m.encoder_k.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    return calls


def test_full_method_parts():
    m = _ct()
    calls = _key_calls(m)
    out = m.training_step(_views(), LABELS, 0)
    assert {"cls", "img", "concept", "ib_cls", "ib_kl"} <= set(out)
    assert len(calls) == 3                                  # v2 (query-side search), v1, v3
    assert set(m.heads(torch.randn(2, 3, 64, 64))) == {"main", "ib"}
    assert m.protocol_note() and _ct(eval_sample_ib=True).protocol_note() is None


def test_without_concept_loss_no_patch_search_no_concept_queue(monkeypatch):
    m = _ct(concept_loss=False)
    monkeypatch.setattr(type(m), "_search", lambda *a: pytest.fail("patch search ran"))
    calls = _key_calls(m)
    out = m.training_step(_views(), LABELS, 0)
    assert "concept" not in out and "img" in out and len(calls) == 1       # only v1
    assert m.queues.queue_h is None and "queues.queue_h" not in m.state_dict()
    # confusing is not checked when the concept loss is off
    build_method("concept_tuning", build_backbone("resnet18", False), 3, 64, {"concept_loss": False})


def test_without_image_loss_no_key_forward_on_v1():
    m = _ct(image_loss=False)
    calls = _key_calls(m)
    out = m.training_step(_views(), LABELS, 0)
    assert "img" not in out and "concept" in out and len(calls) == 2
    assert m.queues.queue_z is None


def test_frontdoor_head_only_has_no_key_encoder():
    m = _ct(concept_loss=False, image_loss=False)
    assert m.encoder_k is None and m.queues is None
    out = m.training_step(_views(), LABELS, 0)
    assert set(out) >= {"cls", "ib_cls", "ib_kl"} and not {"img", "concept"} & set(out)
    out["loss"].backward()
    assert m.frontdoor.decoder.weight.grad is not None


def test_without_frontdoor_the_main_head_alone():
    full, m = _ct(), _ct(frontdoor=False)
    assert m.frontdoor is None
    assert _count(full) - _count(m) == _count(full.frontdoor)
    x = torch.randn(2, 3, 64, 64)
    full.eval(), m.eval()
    heads = m.heads(x)
    assert set(heads) == {"main"} and torch.allclose(heads["main"], full.heads(x)["main"])   # nothing else changed
    out = m.train().training_step(_views(), LABELS, 0)
    assert not {"ib_cls", "ib_kl"} & set(out)


def test_without_bottleneck_attention_features_go_straight_to_the_classifier():
    m = _ct(bottleneck=False)
    assert m.frontdoor.encoder is None and m.frontdoor.decoder.in_features == 512
    out = m.training_step(_views(), LABELS, 0)
    assert "ib_kl" not in out and "ib_cls" in out
    assert set(m.heads(torch.randn(2, 3, 64, 64))) == {"main", "ib"}


@pytest.mark.parametrize("attention, kept", [("channel", "cam"), ("position", "pam")])
def test_single_attention_module(attention, kept):
    full, m = _ct(), _ct(attention=attention)
    dropped = {"cam", "pam"} - {kept}
    assert getattr(m.frontdoor, dropped.pop()) is None and getattr(m.frontdoor, kept) is not None
    assert _count(full.frontdoor) - _count(m.frontdoor) == (_count(full.frontdoor.pam) if kept == "cam"
                                                            else _count(full.frontdoor.cam))
    fmap = torch.randn(2, 512, 3, 3)
    with torch.no_grad():
        m.frontdoor.load_state_dict(full.frontdoor.state_dict(), strict=False)
        part = getattr(full.frontdoor, kept)(fmap)
        assert torch.allclose(m.frontdoor.attend(fmap), part)
        assert torch.allclose(full.frontdoor.attend(fmap), full.frontdoor.cam(fmap) + full.frontdoor.pam(fmap))


def test_bad_settings_name_the_valid_range():
    with pytest.raises(ValueError, match=r"K=0 \(must be an integer >= 1\)"):
        _ct(K=0)
    with pytest.raises(ValueError, match=r"m=1.0 \(must be in \[0, 1\)\)"):
        _ct(m=1.0)
    with pytest.raises(ValueError, match="attention"):
        _ct(attention="spatial")
