"""pipeline_steps.analysis.activations and the extract step: token layout, the streaming NPZ and its reader."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline_steps.analysis.activations import (
    FORMAT, TOKEN_POLICY, ActivationsFile, array_name, iter_activations, write_activations,
)
from pipeline_steps.errors import UserError
from pipeline_steps.models.build import create_model
from pipeline_steps.models.layers import resolve_layers
from pipeline_steps.models.weights import weights_hash

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, num_classes=10)
FAMILIES = {
    # arch, kwargs, prefix tokens present in the block outputs
    "vit": ("vit_tiny_patch16_224", dict(SMALL, depth=3), 1),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(SMALL, depth=2), 2),
    "cait": ("cait_xxs24_224", dict(SMALL, depth=2, depth_token_only=1), 0),  # cls joins only in blocks_token_only
}


def tiny_vit(**kwargs) -> torch.nn.Module:
    return create_model({"arch": "vit_tiny_patch16_224", "kwargs": dict(SMALL, depth=3, **kwargs)})


def loader(n: int = 10, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.arange(n) % 10
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_nchw_token_mapping_matches_block_output(family):
    arch, kwargs, prefix = FAMILIES[family]
    model = create_model({"arch": arch, "kwargs": kwargs})
    layers = resolve_layers(model, "all")
    captured: dict[int, torch.Tensor] = {}
    hooks = [model.blocks[i].register_forward_hook(lambda m, i_, out, i=i: captured.__setitem__(i, out.clone()))
             for i in layers]
    try:
        (acts,) = list(iter_activations(model, loader(n=3, batch_size=3), layers))
    finally:
        for h in hooks:
            h.remove()
    assert len(acts) == len(layers)
    for i, act in zip(layers, acts):
        tokens = captured[i]
        assert act.shape == (3, 32, 4, 4) and act.dtype == torch.float32 and not act.requires_grad
        assert tokens.shape[1] == prefix + 16  # prefix tokens + the 4x4 patch grid
        for h in range(4):
            for w in range(4):
                torch.testing.assert_close(act[:, :, h, w], tokens[:, prefix + h * 4 + w, :], rtol=0, atol=0)


def test_eval_mode_no_grad_and_mode_restored():
    model = tiny_vit(drop_rate=0.5, proj_drop_rate=0.5)
    model.train()
    first = [a.clone() for a in next(iter_activations(model, loader(n=4), [0, 2]))]
    second = next(iter_activations(model, loader(n=4), [0, 2]))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # dropout off: eval mode
        assert not b.requires_grad and b.is_inference()
    assert model.training  # previous mode restored
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_layer_subset_equals_the_same_blocks_of_all():
    model = tiny_vit()
    full = next(iter_activations(model, loader(n=2), [0, 1, 2]))
    sub = next(iter_activations(model, loader(n=2), [0, 2]))
    torch.testing.assert_close(sub[0], full[0], rtol=0, atol=0)
    torch.testing.assert_close(sub[1], full[2], rtol=0, atol=0)


def test_streaming_npz_round_trip(tmp_path):
    model = tiny_vit()
    layers = [0, 1, 2]
    expected = [torch.cat(x).numpy() for x in zip(*iter_activations(model, loader(n=10), layers))]
    path = tmp_path / "acts" / "teacher.npz"
    meta = write_activations(path, model, loader(n=10), layers,
                             {"manifest_hash": "abc", "model": {"arch": "vit_tiny_patch16_224"}})
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher.npz"]  # temp parts cleaned up

    with np.load(path) as npz:
        assert sorted(npz.files) == ["layer_00", "layer_01", "layer_02", "meta"]
        plain = {name: npz[name] for name in npz.files}
    assert json.loads(str(plain["meta"][()])) == meta
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}

    f = ActivationsFile(path)
    assert f.meta == meta and f.layers == ["layer_00", "layer_01", "layer_02"] and f.layer_indices == layers
    assert meta["format"] == FORMAT and meta["token_policy"] == TOKEN_POLICY
    assert meta["n_images"] == 10 and meta["labels"] == [i % 10 for i in range(10)]
    assert meta["layer_names"] == ["blocks.0", "blocks.1", "blocks.2"] and meta["prefix_tokens_removed"] == 1
    assert meta["weights_hash"] == weights_hash(model) and meta["manifest_hash"] == "abc"
    for pos, name in enumerate(f.layers):
        np.testing.assert_array_equal(plain[name], expected[pos])
        assert f.shape(pos) == f.shape(name) == (10, 32, 4, 4)
        loaded = f.load(pos)
        assert loaded.dtype == np.float32 and np.array_equal(loaded, plain[name])
        chunks = list(f.iter_chunks(name, 3))
        assert [c.shape[0] for c in chunks] == [3, 3, 3, 1]
        assert np.array_equal(np.concatenate(chunks), plain[name])
    np.testing.assert_array_equal(f.load_all(), np.stack([plain[n] for n in f.layers]))


def test_npz_bytes_are_reproducible_and_named_by_block(tmp_path):
    model = tiny_vit()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    write_activations(a, model, loader(n=5), [1, 2])
    write_activations(b, model, loader(n=5, batch_size=2), [1, 2])
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert ActivationsFile(a).layers == ["layer_01", "layer_02"]
    assert array_name(7, 24) == "layer_07" and array_name(7, 120) == "layer_007"


def test_no_partial_output_when_the_loader_fails(tmp_path):
    model = tiny_vit()
    images = torch.randn(8, 3, 32, 32)

    class Failing(DataLoader):
        def __iter__(self):
            yield images[:4], torch.zeros(4, dtype=torch.long)
            raise RuntimeError("disk gone")

    path = tmp_path / "out.npz"
    with pytest.raises(RuntimeError, match="disk gone"):
        write_activations(path, model, Failing(TensorDataset(images), batch_size=4), [0])
    assert list(tmp_path.iterdir()) == []


def test_meta_labels_must_match_the_data(tmp_path):
    with pytest.raises(UserError, match="labels disagree with the data at image 2 .*re-run the sample step"):
        write_activations(tmp_path / "x.npz", tiny_vit(), loader(n=4), [0], {"labels": [0, 1, 5, 3]})
    assert list(tmp_path.iterdir()) == []


def test_reader_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="activations file not found.*extract"):
        ActivationsFile(tmp_path / "none.npz")
    np.savez(tmp_path / "plain.npz", layer_00=np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(UserError, match="not an activations file of this pipeline.*no 'meta'"):
        ActivationsFile(tmp_path / "plain.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not an activations file of this pipeline"):
        ActivationsFile(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", meta=np.array(json.dumps({"format": "something-else"})))
    with pytest.raises(UserError, match="unknown 'meta' format"):
        ActivationsFile(tmp_path / "other.npz")


def test_extract_run_end_to_end_and_image_size_error(tmp_path):
    """The extract step on a real generated dataset and sample manifest: images in manifest order, ids and
    labels recorded in that order, the same activations as a direct forward pass."""
    from conftest import small_sample
    from pipeline_steps.data.manifest import manifest_hash, read_manifest
    from pipeline_steps.steps import extract

    data, test_set, manifest, rows = small_sample(tmp_path)
    params = {"dataset": {"kind": "synthetic"},
              "teacher": {"model": {"arch": "vit_tiny_patch16_224", "kwargs": dict(SMALL, depth=3),
                                    "weights": {"source": "random", "seed": 1}}}}
    out = tmp_path / "teacher.npz"
    spec, settings = params["teacher"]["model"], dict(dataset=params["dataset"], layers=[2, 0], batch_size=2)
    meta = extract.run(spec, out, manifest_path=manifest, synthetic_path=data, **settings)
    f = ActivationsFile(out)
    assert f.layer_indices == [0, 2]
    assert meta["image_ids"] == rows["id"].tolist() and meta["labels"] == rows["label"].tolist()
    assert meta["manifest_hash"] == manifest_hash(read_manifest(manifest)) and meta["model"]["weights"]["seed"] == 1
    model = create_model(params["teacher"]["model"])
    images = torch.stack([test_set[i][0] for i in rows["index"]])
    direct = next(iter_activations(model, [images], [0, 2]))
    np.testing.assert_array_equal(f.load(1), direct[1].numpy())

    params["teacher"]["model"]["kwargs"]["img_size"] = 64
    with pytest.raises(UserError, match="images are 32x32 but model 'vit_tiny_patch16_224' expects 64x64; "
                                        "set teacher.model.kwargs.img_size to 32"):
        extract.run(spec, tmp_path / "bad.npz", manifest_path=manifest, synthetic_path=data, **settings)
    with pytest.raises(UserError, match="sample manifest not found"):
        extract.run(spec, tmp_path / "bad.npz", manifest_path=tmp_path / "none.parquet", synthetic_path=data,
                    **settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "manifest.parquet", "teacher.npz"]
