"""The follow-up's student architectures (pipeline_steps.models.remedies): parameter counts, FLOPs and
forward semantics against golden values (docs/followup.md sections 2.2-2.4)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from pipeline_steps.errors import UserError
from pipeline_steps.models.build import create_model, describe_model, model_depth
from pipeline_steps.models.cost import inference_cost
from pipeline_steps.models.layers import block_channels
from pipeline_steps.models.remedies import student_spec_for
from pipeline_steps.models.weights import load_checkpoint_spec, save_weights, weights_hash

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10)
PAPER = {"arch": "vit_tiny_patch16_224", "kwargs": {}, "weights": {"source": "random", "seed": 0}}


def tiny(arch: str, seed: int = 0, **extra) -> torch.nn.Module:
    kwargs = dict(TINY, **extra) if arch == "vit_tiny_patch16_224" else dict(TINY, wide_dim=64, **extra)
    return create_model({"arch": arch, "kwargs": kwargs, "weights": {"source": "random", "seed": seed}})


def _macs_deit_tiny(widelast: bool = False, lift: bool = False) -> int:
    """followup.md 2.4's hand count at 224 px, 197 tokens, 1000 classes (the projector on all 197 tokens)."""
    n, c, w = 197, 192, 384

    def block(d: int) -> int:
        return n * 12 * d * d + 2 * n * n * d  # qkv + proj + MLP (4x) and the two attention products

    head = (w if lift or widelast else c) * 1000
    macs = 196 * 768 * c + 12 * block(c) + head
    if lift:
        macs += n * c * w
    if widelast:
        macs += block(w) - block(c) + n * c * w
    return macs


def test_registered_with_timm_when_build_is_imported():
    assert timm.is_model("vit_lift") and timm.is_model("vit_widelast")


@pytest.mark.parametrize("architecture,params,flops,published_gflops", [
    ("base", 5_717_416, 2 * _macs_deit_tiny(), 2.507),
    ("lift", 5_983_528, 2 * _macs_deit_tiny(lift=True), 2.536),
    # The follow-up README's 7,239,016 omits the input projection, its LN and the wider final LN (74,880).
    ("widelast", 7_313_896, 2 * _macs_deit_tiny(widelast=True), 3.089),
])
def test_paper_scale_parameters_and_flops(architecture, params, flops, published_gflops):
    spec = student_spec_for(PAPER, architecture, 384)
    got_params, got_flops = inference_cost(spec, 224)
    assert got_params == params
    assert got_flops == flops
    assert abs(got_flops / 1e9 - published_gflops) / published_gflops < 0.005
    assert model_depth(spec) == 12


def test_paper_scale_flop_values():
    # The hand count itself, as numbers (2 x MACs).
    assert 2 * _macs_deit_tiny() == 2_507_366_400
    assert 2 * _macs_deit_tiny(lift=True) == 2_536_799_232
    assert 2 * _macs_deit_tiny(widelast=True) == 3_089_483_520
    assert 7_313_896 - 7_239_016 == 384 * 192 + 2 * 384 + 384


def test_widelast_heads_keep_the_base_head_dim():
    with torch.device("meta"):
        model = timm.create_model("vit_widelast", wide_dim=384)
    wide = model.blocks[-1].block
    assert wide.attn.num_heads == 6 and wide.attn.head_dim == 64
    assert wide.mlp.fc1.out_features == 1536 and wide.attn.qkv.bias is not None
    assert model.blocks[-1].norm.eps == 1e-6 and model.norm.normalized_shape == (384,)
    assert model.head.in_features == 384 and model.global_pool == "token"
    assert timm.create_model("vit_widelast", wide_dim=384, wide_heads=3, **TINY | {"embed_dim": 192}).blocks[-1] \
        .block.attn.num_heads == 3


def test_block_channels():
    assert block_channels(tiny("vit_tiny_patch16_224")) == [32, 32, 32]
    assert block_channels(tiny("vit_lift")) == [32, 32, 64]
    assert block_channels(tiny("vit_widelast")) == [32, 32, 64]


def test_lift_forward_is_the_head_on_the_patch_mean_of_the_lifted_map():
    model = tiny("vit_lift")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    final, feats = model.forward_intermediates(x, indices=[1, 2], norm=False, output_fmt="NCHW")
    assert [tuple(f.shape) for f in feats] == [(2, 32, 4, 4), (2, 64, 4, 4)]
    # The lifted map by hand: LN(P h) of the base's last-block output h, patch tokens only.
    with torch.no_grad():
        tokens = model.patch_embed(x)
        tokens = model._pos_embed(tokens)
        for blk in model.blocks[:-1]:
            tokens = blk(tokens)
        h = model.blocks[-1].block(tokens)
        lifted = F.layer_norm(h @ model.blocks[-1].proj.weight.T, (64,), model.blocks[-1].norm.weight,
                              model.blocks[-1].norm.bias, eps=1e-5)
        patches = lifted[:, 1:]
        expected_logits = patches.mean(1) @ model.head.weight.T + model.head.bias
        logits = model(x)
    torch.testing.assert_close(feats[1], patches.reshape(2, 4, 4, 64).permute(0, 3, 1, 2))
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(model.forward_head(final), logits)
    assert not any(name.startswith("norm.") for name, _ in model.named_parameters())  # base norm not registered
    assert sum(p.numel() for p in model.parameters()) == (
        sum(p.numel() for p in tiny("vit_tiny_patch16_224").parameters())
        - (32 * 10 + 10) - 2 * 32 + 32 * 64 + 2 * 64 + (64 * 10 + 10))


def test_widelast_forward_replaces_the_residual_stream_and_reads_cls():
    model = tiny("vit_widelast")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, indices=[2], norm=False, output_fmt="NCHW")
        tokens = model._pos_embed(model.patch_embed(x))
        for blk in model.blocks[:-1]:
            tokens = blk(tokens)
        last = model.blocks[-1]
        stream = F.layer_norm(tokens @ last.proj.weight.T, (64,), last.norm.weight, last.norm.bias, eps=1e-6)
        out = last.block(stream)
        expected = model.head(F.layer_norm(out[:, 0], (64,), model.norm.weight, model.norm.bias, eps=1e-6))
        logits = model(x)
    torch.testing.assert_close(feats[0], out[:, 1:].reshape(2, 4, 4, 64).permute(0, 3, 1, 2))
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(model.forward_head(final), logits)


@pytest.mark.parametrize("arch", ["vit_lift", "vit_widelast"])
def test_seeded_init_and_checkpoint_reload(arch, tmp_path):
    a, b, c = tiny(arch, seed=0), tiny(arch, seed=0), tiny(arch, seed=1)
    assert weights_hash(a) == weights_hash(b) != weights_hash(c)
    # timm's trunc_normal_(std=0.02) truncates at +-2 absolute, i.e. practically a N(0, 0.02^2).
    assert abs(float(a.blocks[-1].proj.weight.detach().std()) - 0.02) < 0.002
    assert float(a.head.bias.detach().abs().max()) == 0.0
    spec = {"arch": arch, "kwargs": dict(TINY, wide_dim=64)}
    path = tmp_path / "model.safetensors"
    save_weights(c, path, metadata=spec)
    reloaded = create_model(load_checkpoint_spec(path))
    assert weights_hash(reloaded) == weights_hash(c)
    assert describe_model(spec) == "ViT, 3 blocks, width 32, patch 8"


def test_student_spec_for_and_bad_kwargs():
    base = {"arch": "vit_tiny_patch16_224", "kwargs": dict(TINY), "weights": {"source": "random", "seed": 3}}
    spec = student_spec_for(base, "lift", 64)
    assert spec == {"arch": "vit_lift", "kwargs": {"base_arch": "vit_tiny_patch16_224", "wide_dim": 64, **TINY},
                    "weights": {"source": "random", "seed": 3}}
    assert student_spec_for(base, "base", 64) == base
    with pytest.raises(UserError, match="unknown student architecture 'wide'"):
        student_spec_for(base, "wide", 64)
    with pytest.raises(UserError, match="wide_dim must be a positive integer"):
        create_model({"arch": "vit_lift", "kwargs": dict(TINY)})
    with pytest.raises(UserError, match="not a multiple of the base's head dim 16"):
        create_model({"arch": "vit_widelast", "kwargs": dict(TINY, wide_dim=40)})
