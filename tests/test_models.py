"""Backbones: feature maps, channels and stride, packaged weights, clear errors for weights."""
import urllib.error

import pytest
import torch

from ctlib.models import PretrainedWeightsError, build_backbone


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("resnet50", 2048), ("efficientnet_lite0", 1280)])
def test_feature_map_channels_and_stride(name, channels):
    bb = build_backbone(name, pretrained=False).eval()
    with torch.no_grad():
        f = bb(torch.randn(1, 3, 96, 96))
    assert (bb.channels, bb.stride) == (channels, 32)
    assert f.shape == (1, channels, 3, 3)
    assert bb.source_head is None                          # random init: no ImageNet classifier


def test_efficientnet_lite0_packaged_imagenet_weights_load_offline():
    bb = build_backbone("efficientnet_lite0", pretrained=True).eval()
    assert bb.pretrained == "imagenet" and bb.mean == (0.5, 0.5, 0.5)
    assert (bb.source_head.in_features, bb.source_head.out_features) == (1280, 1000)
    # real weights: BN statistics are not the (0, 1) of an untrained network
    bn = bb.body.net._bn0
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    with torch.no_grad():                                 # small crops work too (the concept patches)
        assert bb(torch.randn(2, 3, 18, 18)).shape == (2, 1280, 1, 1)


def test_resnet_weights_offline_and_not_cached_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    def no_network(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(PretrainedWeightsError, match=r"resnet50.*cached in .*checkpoints.*pretrained=False"):
        build_backbone("resnet50", pretrained=True)


def test_backbone_checkpoint_loading_and_key_errors(tmp_path):
    src = build_backbone("resnet18", pretrained=False)
    torch.save({f"body.{k}": v for k, v in src.body.state_dict().items()}, tmp_path / "good.pth")
    bb = build_backbone("resnet18", pretrained=str(tmp_path / "good.pth"))
    assert torch.equal(bb.body.conv1.weight, src.body.conv1.weight) and bb.pretrained.endswith("good.pth")
    state = src.body.state_dict()
    del state["layer4.1.bn2.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing keys \['layer4.1.bn2.weight'\]"):
        build_backbone("resnet18", pretrained=str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")
