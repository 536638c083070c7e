"""load_pretrained with state dicts built here from the official key names and shapes (no downloads)."""

from __future__ import annotations

import logging

import pytest
import torch

from pointdr2.models import build_model, load_pretrained

D, DEPTH = 384, 12


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def official_encoder_shapes(encoder_dims: int, bert: bool, cls: bool = True) -> dict[str, tuple]:
    """Key -> shape of the official PointTransformer encoder (written out from the official layout)."""
    s = {"encoder.first_conv.0.weight": (128, 3, 1), "encoder.first_conv.0.bias": (128,),
         **_bn("encoder.first_conv.1", 128),
         "encoder.first_conv.3.weight": (256, 128, 1), "encoder.first_conv.3.bias": (256,),
         "encoder.second_conv.0.weight": (512, 512, 1), "encoder.second_conv.0.bias": (512,),
         **_bn("encoder.second_conv.1", 512),
         "encoder.second_conv.3.weight": (encoder_dims, 512, 1), "encoder.second_conv.3.bias": (encoder_dims,),
         "pos_embed.0.weight": (128, 3), "pos_embed.0.bias": (128,), "pos_embed.2.weight": (D, 128),
         "pos_embed.2.bias": (D,), "norm.weight": (D,), "norm.bias": (D,)}
    if bert:
        s.update({"reduce_dim.weight": (D, encoder_dims), "reduce_dim.bias": (D,)})
    if cls:
        s.update({"cls_token": (1, 1, D), "cls_pos": (1, 1, D)})
    for i in range(DEPTH):
        p = f"blocks.blocks.{i}"
        s.update({f"{p}.norm1.weight": (D,), f"{p}.norm1.bias": (D,), f"{p}.attn.qkv.weight": (3 * D, D),
                  f"{p}.attn.proj.weight": (D, D), f"{p}.attn.proj.bias": (D,), f"{p}.norm2.weight": (D,),
                  f"{p}.norm2.bias": (D,), f"{p}.mlp.fc1.weight": (4 * D, D), f"{p}.mlp.fc1.bias": (4 * D,),
                  f"{p}.mlp.fc2.weight": (D, 4 * D), f"{p}.mlp.fc2.bias": (D,)})
    return s


def head_shapes(bert: bool, classes: int) -> dict[str, tuple]:
    if bert:
        return {"cls_head_finetune.0.weight": (256, 2 * D), "cls_head_finetune.0.bias": (256,),
                "cls_head_finetune.3.weight": (classes, 256), "cls_head_finetune.3.bias": (classes,)}
    return {"cls_head_finetune.0.weight": (256, 2 * D), "cls_head_finetune.0.bias": (256,),
            **_bn("cls_head_finetune.1", 256), "cls_head_finetune.4.weight": (256, 256),
            "cls_head_finetune.4.bias": (256,), **_bn("cls_head_finetune.5", 256),
            "cls_head_finetune.8.weight": (classes, 256), "cls_head_finetune.8.bias": (classes,)}


def _tensors(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1234)
        else:
            out[k] = torch.randn(shape, generator=g)
    return out


def _assert_landed(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    sd = model.state_dict()
    for k, v in expected.items():
        assert k in sd, k
        assert torch.equal(sd[k], v), k


@pytest.fixture(scope="module")
def models():
    return {"pointbert": build_model({"name": "pointbert", "num_classes": 40}),
            "pointmae": build_model({"name": "pointmae", "num_classes": 40})}


def test_pointbert_pretrain(models, tmp_path, caplog):
    model = models["pointbert"]
    enc = _tensors(official_encoder_shapes(256, bert=True), 0)
    base = {f"module.transformer_q.{k}": v for k, v in enc.items()}
    # pretraining-only parts of the official checkpoint
    base.update({"module.transformer_q.cls_head.0.weight": torch.randn(256, D),
                 "module.transformer_q.lm_head.weight": torch.randn(8192, D),
                 "module.transformer_q.mask_token": torch.randn(1, 1, D),
                 "module.transformer_k.cls_token": torch.randn(1, 1, D),
                 "module.transformer_k.blocks.blocks.0.norm1.weight": torch.randn(D),
                 "module.dvae.codebook": torch.randn(8192, 256), "module.queue": torch.randn(256, 16384),
                 "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    path = tmp_path / "Point-BERT.pth"
    torch.save({"base_model": base, "optimizer": {"state": {}}, "epoch": 300}, path)
    with caplog.at_level(logging.INFO, logger="pointdr2"):
        report = load_pretrained(model, path)
    _assert_landed(model, enc)
    head = sorted(head_shapes(True, 40))
    assert sorted(report.missing) == head
    assert sorted(report.expected_missing) == head and report.unexpected_missing == []
    assert report.unexpected == []
    assert "expected" in caplog.text


def test_pointmae_pretrain(models, tmp_path):
    model = models["pointmae"]
    enc = _tensors(official_encoder_shapes(384, bert=False, cls=False), 1)
    base = {f"MAE_encoder.{k}": v for k, v in enc.items()}
    base.update({"mask_token": torch.randn(1, 1, D), "decoder_pos_embed.0.weight": torch.randn(128, 3),
                 "MAE_decoder.blocks.0.norm1.weight": torch.randn(D), "MAE_decoder.norm.weight": torch.randn(D),
                 "increase_dim.0.weight": torch.randn(96, D, 1)})
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": base, "epoch": 300}, path)
    report = load_pretrained(model, path)
    _assert_landed(model, enc)
    expected = sorted([*head_shapes(False, 40), "cls_token", "cls_pos"])
    assert sorted(report.expected_missing) == expected and report.unexpected_missing == []
    # (torch does not report num_batches_tracked as missing: BatchNorm fills it in)
    assert sorted(report.missing) == [k for k in expected if not k.endswith("num_batches_tracked")]
    assert report.unexpected == []


@pytest.mark.parametrize("name,key,prefix", [("pointbert", "base_model", "module."), ("pointmae", "model", ""),
                                             ("pointmae", "base_model", "module.module.")])
def test_finetuned_checkpoints(models, tmp_path, name, key, prefix):
    model = models[name]
    bert = name == "pointbert"
    full = _tensors({**official_encoder_shapes(256 if bert else 384, bert), **head_shapes(bert, 40)}, 2)
    path = tmp_path / "ft.pth"
    torch.save({key: {prefix + k: v for k, v in full.items()}, "optimizer": {}, "epoch": 212,
                "metrics": {"acc": 93.2}, "best_metrics": {"acc": 93.4}}, path)
    report = load_pretrained(model, path)
    _assert_landed(model, full)
    assert report.missing == [] and report.unexpected == [] and report.expected_missing == []


def test_encoder_only_checkpoint_expects_a_new_head(models, tmp_path):
    # An encoder exported without its head (to finetune on another label set): the head is expected
    # missing; a checkpoint that carries part of a head is not.
    model = models["pointmae"]
    head = sorted(k for k in model.state_dict()
                  if k.startswith("cls_head_finetune.") and not k.endswith("num_batches_tracked"))
    encoder = _tensors(official_encoder_shapes(384, False), 3)
    torch.save({"base_model": encoder}, tmp_path / "enc.pth")
    report = load_pretrained(model, tmp_path / "enc.pth")
    _assert_landed(model, encoder)
    assert sorted(report.missing) == head and report.unexpected_missing == []
    partial = {**encoder, **{k: v for k, v in _tensors(head_shapes(False, 40), 4).items() if ".8." not in k}}
    torch.save({"base_model": partial}, tmp_path / "partial.pth")
    report = load_pretrained(model, tmp_path / "partial.pth")
    assert sorted(report.unexpected_missing) == ["cls_head_finetune.8.bias", "cls_head_finetune.8.weight"]


def test_own_checkpoint_roundtrip(tmp_path):
    cfg = {"name": "pointmae", "trans_dim": 24, "depth": 1, "num_heads": 3, "encoder_dims": 24,
           "num_group": 4, "group_size": 4, "num_classes": 3}
    torch.manual_seed(0)
    src = build_model(cfg)
    torch.manual_seed(1)
    dst = build_model(cfg)
    path = tmp_path / "best.pth"
    torch.save({"format": "pointdr2-checkpoint", "version": 1, "model": src.state_dict(), "epoch": 3,
                "config": {"model": cfg}}, path)
    report = load_pretrained(dst, path)
    assert report.layout == "pointdr2" and report.missing == [] and report.unexpected == []
    _assert_landed(dst, src.state_dict())


def test_errors_are_one_line_and_name_the_culprit(models, tmp_path):
    mae = models["pointmae"]
    # Point-BERT finetuned weights into Point-MAE: tokenizer width differs
    bert = _tensors({**official_encoder_shapes(256, True), **head_shapes(True, 40)}, 3)
    p = tmp_path / "bert.pth"
    torch.save({"base_model": bert}, p)
    with pytest.raises(ValueError, match=r"shape mismatch for 'encoder.second_conv.3.weight'") as exc:
        load_pretrained(mae, p)
    assert "\n" not in str(exc.value) and str(p) in str(exc.value)
    # another family (PointNeXt-like keys)
    p = tmp_path / "pointnext.pth"
    torch.save({"model": {"encoder.encoder.0.0.convs.0.0.weight": torch.randn(32, 4, 1)}}, p)
    with pytest.raises(ValueError, match="another model family"):
        load_pretrained(mae, p)
    # not a checkpoint at all
    p = tmp_path / "notes.pth"
    p.write_text("hello")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_pretrained(mae, p)
    # a pickle that is not a dict / has no tensors
    p = tmp_path / "list.pth"
    torch.save([1, 2, 3], p)
    with pytest.raises(ValueError, match="holds a list"):
        load_pretrained(mae, p)
    p = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, p)
    with pytest.raises(ValueError, match="not a tensor|no model state dict"):
        load_pretrained(mae, p)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained(mae, tmp_path / "missing.pth")
