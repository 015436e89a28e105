"""Models: factory, heads (Query2Label, ML-Decoder, linear), configs, checkpoints, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

from labelfix.errors import LabelfixError
from labelfix.models import (
    MultiLabelModel, create_model, list_heads, load_checkpoint, model_config, model_from_checkpoint,
)
from labelfix.models.mldecoder import MLDecoderHead
from labelfix.models.q2l import Query2LabelHead, sine_position_encoding

SMALL = {
    "linear": {},
    "q2l": {"hidden_dim": 32, "num_heads": 4, "dim_feedforward": 64},
    "mldecoder": {"embed_dim": 32, "num_heads": 4, "dim_feedforward": 64, "num_groups": 3},
}
K = 7


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _model(head: str, backbone: str = "test_resnet", **kw) -> MultiLabelModel:
    return create_model(backbone, head, num_classes=K, img_size=64, **{**SMALL[head], **kw}).eval()


def test_list_heads():
    assert list_heads() == ["linear", "mldecoder", "q2l"]


@pytest.mark.parametrize("head", ["linear", "q2l", "mldecoder"])
def test_forward_shape_and_channels_last(head):
    model = _model(head)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        # any input size: the positional encoding follows the feature map
        y96 = model(torch.randn(2, 3, 96, 64))
        model = model.to(memory_format=torch.channels_last)
        y_cl = model(x.contiguous(memory_format=torch.channels_last))
    assert y.shape == (3, K) and y96.shape == (2, K)
    assert torch.allclose(y, y_cl, atol=1e-5)


def test_token_backbone_q2l_and_mldecoder():
    for head in ("q2l", "mldecoder"):
        model = create_model("test_vit", head, num_classes=4, img_size=32, **SMALL[head]).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_bad_input_raises_labelfix_error():
    with pytest.raises(LabelfixError, match="unknown head"):
        create_model("test_resnet", "nope", num_classes=3)
    with pytest.raises(LabelfixError, match="unknown timm model"):
        create_model("not_a_model_xyz", "linear", num_classes=3)
    with pytest.raises(LabelfixError, match="bad head options"):
        create_model("test_resnet", "q2l", num_classes=3, hidden_dim=30)
    with pytest.raises(LabelfixError, match="bad head options"):
        create_model("test_resnet", "linear", num_classes=3, not_an_option=1)
    with pytest.raises(LabelfixError, match="not both"):
        create_model("test_resnet", "linear", num_classes=3, pretrained=True, weights="x.pth")
    with pytest.raises(LabelfixError, match="num_classes"):
        create_model("test_resnet", "linear", num_classes=0)


# ---------------------------------------------------------------- Query2Label


def _detr_sine(h: int, w: int, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's PositionEmbeddingSine(normalize=True) on an all-valid mask, verbatim
    (facebookresearch/detr models/position_encoding.py), returned as (h*w, 2*npf)."""
    not_mask = torch.ones(1, h, w)
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (1, D, h, w)
    return pos.flatten(2)[0].T


def test_sine_position_encoding_hand_values():
    # h=1, w=2, dim=4: npf=2, all frequencies 1; y = 2pi; x = (pi, 2pi)
    pos = sine_position_encoding(1, 2, 4)
    expected = torch.tensor([[0.0, 1.0, 0.0, -1.0], [0.0, 1.0, 0.0, 1.0]])
    assert torch.allclose(pos, expected, atol=1e-5)


@pytest.mark.parametrize("hw", [(3, 5), (7, 7), (1, 4)])
def test_sine_position_encoding_matches_detr(hw):
    h, w = hw
    assert torch.allclose(sine_position_encoding(h, w, 64), _detr_sine(h, w, 32), atol=1e-6)


def test_q2l_groupwise_linear_and_independent_queries():
    head = Query2LabelHead(16, 5, hidden_dim=32, num_heads=4, dim_feedforward=64).eval()
    x = torch.randn(2, 16, 3, 4)
    captured = {}
    head.decoder_norm.register_forward_hook(lambda m, i, o: captured.update(hs=o))
    with torch.no_grad():
        logits = head(x)
    hs = captured["hs"]  # (B, K, D)
    manual = torch.stack(
        [(hs[:, k] * head.fc_weight[k]).sum(-1) + head.fc_bias[k] for k in range(5)], dim=1
    )
    assert torch.allclose(logits, manual, atol=1e-5)
    # no decoder self-attention: changing class 0's query changes only logit 0
    with torch.no_grad():
        head.query_embed[0] += 1.0
        changed = head(x)
    assert not torch.allclose(changed[:, 0], logits[:, 0])
    assert torch.allclose(changed[:, 1:], logits[:, 1:], atol=1e-6)


# ---------------------------------------------------------------- ML-Decoder


def _official_group_fc(h, weight, bias, num_classes):
    """Alibaba-MIIL/ML_Decoder GroupFC: a Python loop over groups."""
    out = torch.zeros(h.shape[0], h.shape[1], weight.shape[2])
    for i in range(h.shape[1]):
        out[:, i, :] = torch.matmul(h[:, i, :], weight[i, :, :])
    return out.flatten(1)[:, :num_classes] + bias


@pytest.mark.parametrize("k, groups, expected_g, factor", [(7, 3, 3, 3), (5, 100, 5, 1), (250, 100, 100, 3)])
def test_mldecoder_groups_and_group_fc(k, groups, expected_g, factor):
    head = MLDecoderHead(16, k, num_groups=groups, embed_dim=32, num_heads=4, dim_feedforward=64).eval()
    assert head.query.shape == (expected_g, 32)
    assert head.group_fc_weight.shape == (expected_g, 32, factor)
    assert not any(n == "query" for n, _ in head.named_parameters())  # frozen (a buffer)
    captured = {}
    head.layer.register_forward_hook(lambda m, i, o: captured.update(h=o))
    with torch.no_grad():
        head.group_fc_bias.normal_()
        logits = head(torch.randn(2, 16, 2, 3))
    ref = _official_group_fc(captured["h"], head.group_fc_weight, head.group_fc_bias, k)
    assert logits.shape == (2, k)
    assert torch.allclose(logits, ref, atol=1e-5)


def test_mldecoder_token_and_map_inputs_agree():
    head = MLDecoderHead(8, 4, embed_dim=16, num_heads=2, dim_feedforward=32).eval()
    fmap = torch.randn(2, 8, 3, 3)
    with torch.no_grad():
        assert torch.allclose(head(fmap), head(fmap.flatten(2).transpose(1, 2)), atol=1e-6)


def test_nhwc_backbone_is_permuted():
    class Nhwc(nn.Module):
        output_fmt = "NHWC"
        num_features = 3

        def forward(self, x):
            return x.permute(0, 2, 3, 1)

    head = MLDecoderHead(3, 4, embed_dim=16, num_heads=2, dim_feedforward=32).eval()
    model = MultiLabelModel(Nhwc(), head, {}).eval()
    x = torch.randn(2, 3, 4, 5)
    with torch.no_grad():
        assert torch.allclose(model(x), head(x), atol=1e-6)


# ---------------------------------------------------------------- config + checkpoints


def test_model_config_uses_timm_data_config():
    cfg = model_config(_model("q2l"))
    assert cfg["backbone"] == "test_resnet" and cfg["head"] == "q2l"
    assert cfg["num_classes"] == K and cfg["img_size"] == 64
    assert cfg["head_kwargs"] == SMALL["q2l"]
    assert cfg["mean"] == [0.5, 0.5, 0.5] and cfg["std"] == [0.5, 0.5, 0.5]  # test_resnet's cfg
    assert cfg["interpolation"] == "bilinear" and cfg["crop_mode"] == "squash"
    cfg2 = model_config(create_model("resnet10t", "linear", num_classes=2))
    assert cfg2["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert cfg2["interpolation"] == "bicubic"


def _checkpoint(model: MultiLabelModel, ema: MultiLabelModel | None) -> dict:
    """A checkpoint dict as docs/internals.md fixes it."""
    return {
        "model": model.state_dict(), "ema": None if ema is None else ema.state_dict(),
        "optimizer": {}, "scheduler": {}, "epoch": 3, "global_step": 30, "rng": {}, "sampler": {},
        "model_config": model_config(model), "classes": [f"c{i}" for i in range(K)],
        "run_fingerprint": "abc",
    }


@pytest.mark.parametrize("head", ["linear", "mldecoder"])
def test_checkpoint_round_trip(tmp_path, head):
    model, ema = _model(head), _model(head)
    path = tmp_path / "best.pt"
    torch.save(_checkpoint(model, ema), path)
    ckpt = load_checkpoint(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(ckpt)(x), model(x))
        assert torch.equal(model_from_checkpoint(ckpt, ema=True)(x), ema(x))
        assert not torch.equal(ema(x), model(x))


def test_checkpoint_errors(tmp_path):
    model = _model("linear")
    torch.save(_checkpoint(model, None), tmp_path / "ok.pt")
    with pytest.raises(LabelfixError, match="no EMA weights"):
        model_from_checkpoint(load_checkpoint(tmp_path / "ok.pt"), ema=True)

    with pytest.raises(LabelfixError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(LabelfixError, match="corrupt.pt: not a readable"):
        load_checkpoint(tmp_path / "corrupt.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(LabelfixError, match="foreign.pt: not a labelfix checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"model": {}, "model_config": {"x": _Unsafe()}}, tmp_path / "pickle.pt")
    with pytest.raises(LabelfixError, match="pickle.pt: not a readable"):
        load_checkpoint(tmp_path / "pickle.pt")

    bad = _checkpoint(model, None)
    bad["model"] = _model("linear").state_dict() | {"head.fc.bias": torch.zeros(K + 1)}
    with pytest.raises(LabelfixError, match="do not match"):
        model_from_checkpoint(bad)


class _Unsafe:
    """A class that weights_only unpickling refuses."""


# ---------------------------------------------------------------- offline weights


def test_weights_file_backbone_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", num_classes=1000)  # with its classifier
    sd = source.state_dict()
    torch.save({"state_dict": sd}, tmp_path / "bb.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bb.safetensors"))
    for name in ("bb.pth", "bb.safetensors"):
        model = create_model("test_resnet", "q2l", num_classes=3, weights=tmp_path / name, **SMALL["q2l"])
        got = model.backbone.state_dict()
        assert "fc.weight" not in got
        assert all(torch.equal(got[k], sd[k]) for k in got)


def test_weights_file_full_model(tmp_path):
    trained = _model("linear")
    torch.save(trained.state_dict(), tmp_path / "full.pt")
    same = create_model("test_resnet", "linear", num_classes=K, weights=tmp_path / "full.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(same.eval()(x), trained(x))
    other = create_model("test_resnet", "linear", num_classes=3, weights=tmp_path / "full.pt")
    bb = other.backbone.state_dict()
    assert all(torch.equal(bb[k], trained.backbone.state_dict()[k]) for k in bb)
    assert other.head.fc.weight.shape == (3, trained.head.fc.in_features)


def test_weights_file_errors(tmp_path):
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(LabelfixError, match="wrong.pth"):
        create_model("test_resnet", "linear", num_classes=3, weights=tmp_path / "wrong.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(LabelfixError, match="junk.pth: not a readable weights file"):
        create_model("test_resnet", "linear", num_classes=3, weights=tmp_path / "junk.pth")
    with pytest.raises(LabelfixError, match="not found"):
        create_model("test_resnet", "linear", num_classes=3, weights=tmp_path / "none.pth")


def test_class_prior_counts_known_cells_or_unknown_as_negative():
    from labelfix.models.prior import class_prior

    y = np.array([[1, 0, -1], [1, -1, -1], [0, 0, -1], [-1, 0, 1]], dtype=np.int8)
    # known cells only: (pos + 1) / (known + 2)
    assert np.allclose(class_prior(y, unknown_as_negative=False), [3 / 5, 1 / 5, 2 / 3])
    # unknown cells count as negatives: (pos + 1) / (N + 2)
    assert np.allclose(class_prior(y, unknown_as_negative=True), [3 / 6, 1 / 6, 2 / 6])
    assert np.allclose(class_prior(y, [0, 2], unknown_as_negative=False), [2 / 4, 1 / 4, 1 / 2])


@pytest.mark.parametrize("head", ["linear", "q2l", "mldecoder"])
def test_output_bias_initialised_from_priors_moves_every_logit(head):
    """init_output_bias writes logit(prior) into the head's bias, and that bias is added to
    the logits: every image's logits move by exactly the change of the bias."""
    from labelfix.models.prior import init_output_bias

    model = _model(head)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        before, old = model(x), model.head.output_bias.detach().clone()
    prior = np.linspace(0.02, 0.9, K)
    init_output_bias(model.head, prior)
    assert torch.allclose(model.head.output_bias, torch.log(torch.tensor(prior / (1 - prior), dtype=torch.float32)))
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after - before, (model.head.output_bias - old).expand_as(after), atol=1e-5)


def test_output_bias_errors():
    from labelfix.models.prior import init_output_bias

    class NoBias(nn.Module):
        pass

    with pytest.raises(LabelfixError, match="NoBias: no output_bias.*--no-prior-bias"):
        init_output_bias(NoBias(), [0.5])
    with pytest.raises(LabelfixError, match=r"expected \(7,\) values in \(0, 1\)"):
        init_output_bias(_model("linear").head, [0.5, 0.5])
    with pytest.raises(LabelfixError, match="in \\(0, 1\\)"):
        init_output_bias(_model("linear").head, np.r_[1.0, np.full(K - 1, 0.5)])
