"""Backbone weight files: MoCo training checkpoints (raw and converted), torchvision state dicts,
source_head semantics, clear errors, and ``ctlib convert-moco``.

No MoCo weights exist offline: the MoCo files here have the layout facebookresearch/moco saves,
built from randomly initialised torchvision ResNet-18s (a query and a different key encoder)."""
import logging

import pytest
import torch
import torch.nn as nn
import torchvision

from ctlib.cli import main
from ctlib.engine import RunConfig, fit, load_model
from ctlib.models import PretrainedWeightsError, build_backbone, convert_moco


def _resnet18(seed, fc=None):
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    if fc is not None:
        net.fc = fc
    for m in net.modules():                   # non-trivial BN statistics, so a copy is really checked
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _projection(version):
    # MoCo v1: encoder_q.fc = Linear(512, 128); v2: fc = Sequential(Linear(512, 512), ReLU, Linear(512, 128))
    return nn.Linear(512, 128) if version == 1 else nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))


def _save_moco(path, version=1):
    """A MoCo training checkpoint of facebookresearch/moco's layout; returns the query encoder."""
    q, k = _resnet18(0, _projection(version)), _resnet18(1, _projection(version))
    state = {"module.encoder_q." + n: v for n, v in q.state_dict().items()}
    state.update({"module.encoder_k." + n: v for n, v in k.state_dict().items()})
    state["module.queue"] = torch.randn(128, 256)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}},
               path)
    return q


def _features(net, x):
    """torchvision ResNet up to layer4 (no pooling, no fc), written out."""
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))


@pytest.fixture(params=[1, 2], ids=["moco_v1", "moco_v2"])
def moco(tmp_path, request):
    path = tmp_path / "moco.pth.tar"
    return path, _save_moco(path, request.param)


def test_convert_then_load_round_trip(moco, tmp_path):
    src, q = moco
    done = convert_moco(src, tmp_path / "backbone.pth")
    written = torch.load(tmp_path / "backbone.pth", weights_only=True)
    expected = {n: v for n, v in q.state_dict().items() if not n.startswith("fc.")}
    assert list(written) == list(expected) == done["kept"]
    assert all(torch.equal(written[n], expected[n]) for n in expected)
    assert done["fc"] and all(n.startswith("fc.") for n in done["fc"])
    assert any(n.startswith("module.encoder_k.") for n in done["dropped"]) and "module.queue" in done["dropped"]

    bb = build_backbone("resnet18", pretrained=str(tmp_path / "backbone.pth")).eval()
    got = bb.body.state_dict()
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bb(x), _features(q, x))
    assert bb.source_head is None and bb.pretrained == str(tmp_path / "backbone.pth")


def test_raw_moco_file_loads_like_the_converted_one(moco, tmp_path, caplog):
    src, q = moco
    convert_moco(src, tmp_path / "backbone.pth")
    with caplog.at_level(logging.INFO, logger="ctlib.models.checkpoints"):
        raw = build_backbone("resnet18", pretrained=str(src))
    assert "MoCo's projection, not a class head" in caplog.text
    conv = build_backbone("resnet18", pretrained=str(tmp_path / "backbone.pth"))
    a, b = raw.body.state_dict(), conv.body.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert raw.source_head is None and raw.pretrained == f"moco:{src}"


def test_source_head_only_when_an_imagenet_classifier_was_loaded(tmp_path):
    assert build_backbone("resnet18", pretrained=False).source_head is None
    assert build_backbone("resnet18", pretrained="none").source_head is None
    net = _resnet18(2)                                               # plain torchvision state dict, 1000-way fc
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    bb = build_backbone("resnet18", pretrained=str(tmp_path / "tv.pth"))
    assert isinstance(bb.source_head, nn.Linear) and bb.source_head.out_features == 1000
    assert torch.equal(bb.source_head.weight, net.fc.weight) and torch.equal(bb.source_head.bias, net.fc.bias)
    assert torch.equal(bb.body.layer3[1].bn2.running_var, net.layer3[1].bn2.running_var)
    assert bb.pretrained == str(tmp_path / "tv.pth")
    # a converted file kept with its 128-d projection: that fc is not a class head
    torch.save(_resnet18(3, nn.Linear(512, 128)).state_dict(), tmp_path / "proj.pth")
    assert build_backbone("resnet18", pretrained=str(tmp_path / "proj.pth")).source_head is None


def test_wrong_keys_are_refused_by_name(tmp_path):
    _save_moco(tmp_path / "moco.pth.tar")
    ckpt = torch.load(tmp_path / "moco.pth.tar", weights_only=True)
    sd = ckpt["state_dict"]
    sd["module.encoder_q.layer1.0.conv_1.weight"] = sd.pop("module.encoder_q.layer1.0.conv1.weight")
    torch.save(ckpt, tmp_path / "renamed.pth")
    with pytest.raises(PretrainedWeightsError, match=r"renamed\.pth does not fit resnet18: "
                       r"missing keys \['layer1\.0\.conv1\.weight'\]; unexpected keys \['layer1\.0\.conv_1\.weight'\]"):
        build_backbone("resnet18", pretrained=str(tmp_path / "renamed.pth"))
    del sd["module.encoder_q.layer4.1.bn2.running_mean"]
    sd["module.encoder_q.layer1.0.conv1.weight"] = sd.pop("module.encoder_q.layer1.0.conv_1.weight")
    torch.save(ckpt, tmp_path / "missing.pth")
    with pytest.raises(PretrainedWeightsError, match=r"missing keys \['layer4\.1\.bn2\.running_mean'\]; "
                                                     r"unexpected keys \[\]"):
        build_backbone("resnet18", pretrained=str(tmp_path / "missing.pth"))
    # a resnet18 file into a resnet34: the extra blocks are named
    with pytest.raises(PretrainedWeightsError, match=r"resnet34: missing keys \['layer1\.2\.conv1\.weight'.*"
                                                     r"the checkpoint says arch='resnet18'"):
        build_backbone("resnet34", pretrained=str(tmp_path / "moco.pth.tar"))


@pytest.mark.parametrize("content", ["garbage", "tensor", "list", "namespace", "dict_of_ints"])
def test_a_file_that_is_not_a_checkpoint_is_refused_with_its_path(tmp_path, content):
    import argparse
    path = tmp_path / f"{content}.pth"
    if content == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    else:
        torch.save({"tensor": torch.zeros(3), "list": [torch.zeros(3)], "namespace": argparse.Namespace(lr=1.0),
                    "dict_of_ints": {"epoch": 3}}[content], path)
    with pytest.raises(PretrainedWeightsError) as err:
        build_backbone("resnet18", pretrained=str(path))
    assert str(path) in str(err.value) and "weights_only=False" not in str(err.value)
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        build_backbone("resnet18", pretrained=str(tmp_path / "absent.pth"))


def test_cli_convert_moco(tmp_path, capsys):
    q = _save_moco(tmp_path / "moco.pth.tar", version=2)
    assert main(["convert-moco", str(tmp_path / "moco.pth.tar"), str(tmp_path / "out" / "bb.pth")]) == 0
    out = capsys.readouterr().out
    assert "fc.0.weight" in out and "module.encoder_k.* (" in out and "module.queue_ptr" in out
    written = torch.load(tmp_path / "out" / "bb.pth", weights_only=True)
    assert not any(n.startswith(("fc", "module.")) for n in written)
    assert torch.equal(written["conv1.weight"], q.conv1.weight)

    assert main(["convert-moco", "--keep-fc", str(tmp_path / "moco.pth.tar"), str(tmp_path / "fc.pth")]) == 0
    assert "fc.2.bias" in torch.load(tmp_path / "fc.pth", weights_only=True)

    torch.save(_resnet18(0).state_dict(), tmp_path / "tv.pth")      # not a MoCo checkpoint
    assert main(["convert-moco", str(tmp_path / "tv.pth"), str(tmp_path / "x.pth")]) == 1
    err = capsys.readouterr().err
    assert "tv.pth has no 'module.encoder_q.' keys" in err and "'conv1.weight'" in err
    assert not (tmp_path / "x.pth").exists()


def test_run_with_a_torchvision_file_keeps_its_head_through_load_model(tmp_path):
    torch.save(_resnet18(2).state_dict(), tmp_path / "tv.pth")
    cfg = RunConfig(method="erm", dataset="demo", sample_rate=15, backbone="resnet18",
                    pretrained=str(tmp_path / "tv.pth"), image_size=64, batch_size=8, epochs=1, iters_per_epoch=1,
                    milestones=(), results_dir=str(tmp_path / "results"), progress=False, keep_checkpoint="model")
    fit(cfg)
    model = load_model(cfg)
    assert isinstance(model.backbone.source_head, nn.Linear)
