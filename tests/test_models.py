"""pipeline_steps.models: building specs, weight files, layer selection (tiny real timm models)."""

from __future__ import annotations

import argparse
import builtins

import pytest
import torch

from pipeline_steps.errors import UserError
from pipeline_steps.models.build import _pretrained_name, create_model
from pipeline_steps.models.layers import check_input_size, layer_names, num_blocks, resolve_layers
from pipeline_steps.models.weights import (
    load_checkpoint_spec, load_weights, read_weights_metadata, save_weights, weights_hash,
)

VIT_KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10)
DEIT_KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
CAIT_KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, depth_token_only=1, num_heads=2, num_classes=10)


def vit_spec(seed: int = 0, **weights) -> dict:
    return {"arch": "vit_tiny_patch16_224", "kwargs": dict(VIT_KW),
            "weights": {"source": "random", "seed": seed, **weights}}


class _Exploit:
    """Unpickling this would create a file: proof that weights_only loading executes nothing."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def test_random_init_is_deterministic_eval_float32_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = create_model(vit_spec(seed=0))
    assert torch.equal(torch.rand(1), expected_next)  # init ran in a forked RNG
    b = create_model(vit_spec(seed=0))
    c = create_model(vit_spec(seed=1))
    assert weights_hash(a) == weights_hash(b) != weights_hash(c)
    assert not a.training
    assert all(p.dtype == torch.float32 for p in a.parameters())


@pytest.mark.parametrize("arch,kwargs,blocks", [
    ("vit_tiny_patch16_224", VIT_KW, 3),
    ("deit_tiny_distilled_patch16_224", DEIT_KW, 2),
    ("cait_xxs24_224", CAIT_KW, 2),
])
def test_num_blocks_counts_model_blocks_only(arch, kwargs, blocks):
    model = create_model({"arch": arch, "kwargs": kwargs})
    assert num_blocks(model) == blocks
    if arch.startswith("cait"):
        assert len(model.blocks_token_only) == 1  # class-attention blocks are not layers
    assert resolve_layers(model, "all") == list(range(blocks))


def test_resolve_layers_and_names():
    model = create_model(vit_spec())
    assert resolve_layers(model, [2, 0]) == [0, 2]  # block order, as forward_intermediates returns them
    assert layer_names(model, [0, 2]) == ["blocks.0", "blocks.2"]
    with pytest.raises(UserError, match=r"^analysis\.layers contains 30 but the model has 3 blocks \(valid 0\.\.2\)$"):
        resolve_layers(model, [0, 30])
    with pytest.raises(UserError, match="twice"):
        resolve_layers(model, [1, 1])
    with pytest.raises(UserError, match="not an integer"):
        resolve_layers(model, [True])
    with pytest.raises(UserError, match='"all"'):
        resolve_layers(model, "every")


def test_unknown_arch_suggests_close_names():
    with pytest.raises(UserError) as err:
        create_model({"arch": "vitt_tiny"})
    msg = str(err.value)
    assert msg.startswith("unknown model 'vitt_tiny': not a timm architecture (did you mean 'vit_tiny_patch16_224'")
    assert msg.endswith("see timm.list_models('vit*')") and "\n" not in msg


def test_spec_errors():
    with pytest.raises(UserError, match="model.kwargs not accepted by 'vit_tiny_patch16_224'.*foo"):
        create_model({"arch": "vit_tiny_patch16_224", "kwargs": {**VIT_KW, "foo": 1}})
    with pytest.raises(UserError, match="source=train but no checkpoint"):
        create_model({**vit_spec(), "weights": {"source": "train"}})
    with pytest.raises(UserError, match="source=file but model.weights.path is not set"):
        create_model({**vit_spec(), "weights": {"source": "file"}})
    with pytest.raises(UserError, match="no 'blocks'"):
        create_model({"arch": "test_byobnet"})  # a CNN, but not a ResNet (the only CNN the analysis takes)


def test_safetensors_round_trip_with_spec_metadata(tmp_path):
    model = create_model(vit_spec(seed=3))
    path = tmp_path / "w" / "model.safetensors"
    digest = save_weights(model, path, {"arch": "vit_tiny_patch16_224", "kwargs": VIT_KW, "epoch": 2})
    assert digest == weights_hash(model)
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # atomic: no temp left
    meta = read_weights_metadata(path)
    assert meta["epoch"] == 2 and meta["weights_sha256"] == digest
    spec = load_checkpoint_spec(path)
    assert spec == {"arch": "vit_tiny_patch16_224", "kwargs": VIT_KW,
                    "weights": {"source": "file", "path": str(path), "tag": None, "seed": 0}}
    assert weights_hash(create_model(spec)) == digest
    # source=train with the checkpoint, and weights_path overriding a random spec
    assert weights_hash(create_model({**vit_spec(), "weights": {"source": "train"}}, weights_path=path)) == digest
    assert weights_hash(create_model(vit_spec(seed=9), weights_path=path)) == digest


def test_pth_container_with_ddp_prefix_and_args(tmp_path):
    model = create_model(vit_spec(seed=4))
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    # The DeiT training-checkpoint layout: weights under 'model', plus epoch and an argparse.Namespace.
    torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(lr=5e-4)}, path)
    loaded = create_model({**vit_spec(), "weights": {"source": "file", "path": str(path)}})
    assert weights_hash(loaded) == weights_hash(model)
    ema = tmp_path / "ema.pt"
    torch.save({"state_dict_ema": model.state_dict()}, ema)
    assert weights_hash(load_weights(create_model(vit_spec()), ema)) == weights_hash(model)


def test_mismatch_error_names_counts_and_examples(tmp_path):
    model = create_model(vit_spec())
    sd = dict(model.state_dict())
    del sd["head.weight"]
    sd["fc.bias"] = torch.zeros(3)
    sd["pos_embed"] = torch.zeros(1, 5, 32)
    path = tmp_path / "other.safetensors"
    import safetensors.torch
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(UserError) as err:
        load_weights(model, path)
    assert str(err.value) == (
        f"weight file {path} does not match model 'vit_tiny_patch16_224': 1 missing key (e.g. head.weight), "
        "1 unexpected (e.g. fc.bias), 1 shape mismatch (e.g. pos_embed: file [1,5,32] vs model [1,17,32]); "
        "check model.arch/kwargs")


def test_pickled_code_is_refused_and_not_run(tmp_path):
    model = create_model(vit_spec())
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "extra": _Exploit(str(marker))}, path)
    with pytest.raises(UserError, match="pickled Python objects.*convert it to .safetensors"):
        load_weights(model, path)
    assert not marker.exists()


def test_missing_corrupt_and_unsupported_files(tmp_path):
    model = create_model(vit_spec())
    with pytest.raises(UserError, match="weight file not found"):
        load_weights(model, tmp_path / "nope.safetensors")
    for name in ("bad.safetensors", "bad.pth"):
        (tmp_path / name).write_bytes(b"\x00garbage" * 10)
        with pytest.raises(UserError, match="not a readable"):
            load_weights(model, tmp_path / name)
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported suffix"):
        load_weights(model, tmp_path / "w.h5")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds no state dict"):
        load_weights(model, tmp_path / "list.pt")


def test_timm_pretrained_names_and_offline_error(monkeypatch, tmp_path):
    assert _pretrained_name("cait_s24_224", "fb_dist_in1k") == "cait_s24_224.fb_dist_in1k"
    assert _pretrained_name("cait_s24_224", "cait_s24_224.fb_dist_in1k") == "cait_s24_224.fb_dist_in1k"
    assert _pretrained_name("cait_s24_224", None) == "cait_s24_224"
    with pytest.raises(UserError, match="is for 'deit_tiny_patch16_224' but model.arch is 'cait_s24_224'"):
        _pretrained_name("cait_s24_224", "deit_tiny_patch16_224.fb_in1k")
    with pytest.raises(UserError, match="no pretrained tag 'cait_s24_224.nope'.*fb_dist_in1k"):
        _pretrained_name("cait_s24_224", "nope")
    # Without network the hub would retry for ~45 s; offline mode with an empty cache fails at once,
    # exercising the same error path.
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    spec = {"arch": "vit_tiny_patch16_224", "kwargs": VIT_KW,
            "weights": {"source": "timm", "tag": "augreg_in21k_ft_in1k"}}
    with pytest.raises(UserError, match="could not get timm pretrained weights 'vit_tiny_patch16_224.augreg_in21k_"
                                        "ft_in1k'.*model.weights.source=file"):
        create_model(spec)


def test_weights_hash_is_stable_and_content_based():
    model = create_model(vit_spec())
    h = weights_hash(model)
    assert h == weights_hash(model) and len(h) == 64
    with torch.no_grad():
        model.head.bias[0] += 1
    assert weights_hash(model) != h


def test_inference_cost_of_the_paper_teacher():
    """CaiT-S24 at 224 px (the paper's teacher), against a hand count of its multiply-accumulates: 24 talking-heads
    self-attention blocks over the 196 patch tokens, then 2 class-attention blocks updating the class token."""
    from pipeline_steps.models.cost import inference_cost

    n, c, h = 196, 384, 8
    block = n * c * c * (3 + 1 + 8) + 2 * n * n * c + 2 * n * n * h * h  # qkv, proj, MLP; q k^T, attn v; 2 head mixes
    class_block = c * c * (1 + 2 * (n + 1) + 1 + 8) + 2 * (n + 1) * c  # q of the class token, k and v, proj, MLP
    macs = 24 * block + 2 * class_block + n * 16 * 16 * 3 * c + c * 1000  # + patch embedding and head
    assert inference_cost({"arch": "cait_s24_224", "kwargs": {}}, 224) == (46_916_200, 2 * macs)
    assert 2 * macs == 18_654_655_488  # 9.33 GMACs (timm's model card: 9.35)


def test_check_input_size_names_the_setting():
    model = create_model(vit_spec())
    check_input_size(model, (32, 32))
    with pytest.raises(UserError, match=r"images are 64x64 but model 'vit_tiny_patch16_224' expects 32x32; "
                                        r"set teacher.model.kwargs.img_size to 64"):
        check_input_size(model, (64, 64), where="teacher.model.kwargs.img_size")


def test_saved_weights_are_byte_identical_across_processes(tmp_path):
    """safetensors serialises its header from a hash map; save_weights canonicalises it, so the same weights
    give the same file (and sha256, which checkpoints.json, DVC and the tests rely on) in every process."""
    import hashlib
    import subprocess
    import sys

    code = ("import sys, torch, timm\n"
            "from pipeline_steps.models.weights import save_weights\n"
            "torch.manual_seed(0)\n"
            "m = timm.create_model('vit_tiny_patch16_224', img_size=16, patch_size=8, embed_dim=32, depth=2,"
            " num_heads=2, num_classes=3)\n"
            "save_weights(m, sys.argv[1], {'arch': 'vit_tiny_patch16_224', 'kwargs': {'depth': 2}, 'epoch': 3,"
            " 'run_id': 'x', 'seed': 1})\n")
    digests = set()
    for i in range(3):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / f"w{i}.safetensors")], check=True)
        digests.add(hashlib.sha256((tmp_path / f"w{i}.safetensors").read_bytes()).hexdigest())
    assert len(digests) == 1
