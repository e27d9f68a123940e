"""pipeline_steps.data and the generate-data / sample steps: the generated dataset, the analysis
datasets, sample manifests, and every bad-input case through the CLI (one-line error, no output)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS as TV_IMG_EXTENSIONS

from pipeline_steps.steps import sample
from pipeline_steps.artifacts import sha256_file
from pipeline_steps.config import validate_params
from pipeline_steps.data.synthetic import (
    CLASS_NAMES, _draw_params, _render, generate_synthetic, load_synthetic, write_synthetic,
)
from pipeline_steps.data.datasets import (
    IMAGENET_MEAN, IMAGENET_STD, IMG_EXTENSIONS, ImageFolderDataset, SyntheticDataset, open_dataset,
)
from pipeline_steps.data.manifest import MANIFEST_COLUMNS, ManifestDataset, manifest_hash, sample_manifest
from pipeline_steps.errors import UserError

from conftest import REPO, assert_one_line_error, run_step

TINY = dict(num_classes=10, image_size=32, train_size=200, test_size=50, seed=0, progress=False)
PREPROCESS = validate_params({})["dataset"]["preprocess"]


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny() -> dict[str, np.ndarray]:
    return generate_synthetic(**TINY)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.npz"
    write_synthetic(path, **TINY)
    return str(path)


def _write_tree(root):
    """A tiny ImageNet-style val folder: classes out of order on disk, PNG and JPEG, a nested folder and a
    non-image file (ignored)."""
    colours = iter([(124, 116, 104), (10, 200, 30), (250, 5, 128), (0, 0, 0), (255, 255, 255), (90, 90, 90)])
    for cls, names in {"n02_b": ["img0.png", "img1.JPEG", "extra/img9.png"],
                       "n01_a": ["img0.png", "img1.JPEG", "img2.png"]}.items():
        for name in names:
            path = root / "val" / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (300, 200), next(colours)).save(path, quality=95)
        (root / "val" / cls / "notes.txt").write_text("not an image")
    return root


# --- generated dataset -------------------------------------------------------------------------------


def test_generation_is_deterministic_and_seed_dependent(tiny):
    again = generate_synthetic(**TINY)
    assert set(again) == set(tiny)
    for key in tiny:
        assert np.array_equal(again[key], tiny[key]), key
    other = generate_synthetic(**{**TINY, "seed": 1})
    assert not np.array_equal(other["train_images"], tiny["train_images"])
    assert not np.array_equal(other["test_images"], tiny["test_images"])


def test_generation_matches_golden_bytes():
    """Byte-identical on any machine: these hashes only change with GENERATOR_VERSION."""
    d = generate_synthetic(10, 32, 20, 10, 0, progress=False)
    assert _sha(d["train_images"]) == "751b66eb7576c0653c1fa07d57ffe51aa98da89c9395b3126e638454e2e43b12"
    assert _sha(d["test_images"]) == "1265db576f067a90d6dba59198b696856b2f143f60f02e9f9cfde4bd6c08cc37"


def test_rendering_does_not_depend_on_chunking(tiny):
    labels = tiny["train_labels"]
    params, noise = _draw_params(0, 0, range(37, 45), 32)
    assert np.array_equal(_render(labels[37:45], params, noise, 32), tiny["train_images"][37:45])


def test_shapes_dtypes_and_balance(tiny):
    assert tiny["train_images"].shape == (200, 32, 32, 3) and tiny["train_images"].dtype == np.uint8
    assert tiny["test_images"].shape == (50, 32, 32, 3) and tiny["test_images"].dtype == np.uint8
    assert tiny["train_labels"].dtype == np.int64 and tiny["test_labels"].dtype == np.int64
    assert np.bincount(tiny["train_labels"]).tolist() == [20] * 10
    assert np.bincount(tiny["test_labels"]).tolist() == [5] * 10
    assert list(tiny["class_names"]) == list(CLASS_NAMES)
    assert tiny["mean"].dtype == np.float32 and tiny["std"].shape == (3,)
    meta = json.loads(str(tiny["meta"]))
    assert meta["settings"] == {k: v for k, v in TINY.items() if k != "progress"}
    assert meta["generator_version"] == 1
    # Labels are shuffled, not in blocks, and every image differs.
    assert len(set(tiny["train_labels"][:10].tolist())) > 3
    assert len({_sha(img) for img in tiny["train_images"]}) == 200


def test_fewer_classes_and_other_size():
    d = generate_synthetic(num_classes=3, image_size=20, train_size=7, test_size=4, seed=5, progress=False)
    assert list(d["class_names"]) == ["disc", "ring", "square"]
    assert d["train_images"].shape == (7, 20, 20, 3)
    assert np.bincount(d["train_labels"]).tolist() == [3, 2, 2]


def test_mean_and_std_are_training_pixel_statistics(tiny):
    x = tiny["train_images"].reshape(-1, 3).astype(np.float64) / 255.0
    np.testing.assert_allclose(tiny["mean"], x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(tiny["std"], x.std(axis=0), rtol=1e-6)


def test_written_file_is_reproducible_and_loads(tiny, tiny_npz, tmp_path):
    again = write_synthetic(tmp_path / "again.npz", **TINY)
    assert sha256_file(again) == sha256_file(tiny_npz)  # fixed zip timestamps: same settings, same file
    assert sorted(np.load(tiny_npz).files) == sorted(tiny)
    data = load_synthetic(tiny_npz)
    assert np.array_equal(data.test_images, tiny["test_images"])
    assert data.class_names == list(CLASS_NAMES)
    assert data.meta["settings"]["train_size"] == 200


def test_foreign_or_broken_npz_is_a_user_error(tiny_npz, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="garbage.npz is not a generated dataset .not an NPZ archive.; delete it"):
        load_synthetic(garbage)
    other = tmp_path / "other.npz"
    np.savez(other, train_images=np.zeros(3))
    with pytest.raises(UserError, match="other.npz is not a generated dataset .missing train_labels, class_names"):
        SyntheticDataset(other, "train")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(open(tiny_npz, "rb").read()[:-5000])
    with pytest.raises(UserError, match="truncated.npz is not a"):
        load_synthetic(truncated)


def test_synthetic_dataset_normalises_with_its_statistics(tiny, tiny_npz):
    ds = SyntheticDataset(tiny_npz, "test")
    assert len(ds) == 50 and ds.classes == list(CLASS_NAMES)
    assert ds.ids[3] == "synthetic/test/3" and ds.labels == tiny["test_labels"].tolist()
    x, label = ds[3]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and label == tiny["test_labels"][3]
    expected = (tiny["test_images"][3].astype(np.float32) / 255.0 - tiny["mean"]) / tiny["std"]
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert ds.content_hash(3) == hashlib.sha256(tiny["test_images"][3].tobytes()).hexdigest()


# --- ImageFolder -------------------------------------------------------------------------------------


def test_imagefolder_order_ids_and_preprocessing(tmp_path):
    root = _write_tree(tmp_path / "imagenet")
    ds = ImageFolderDataset(root, "val", PREPROCESS)
    assert ds.classes == ["n01_a", "n02_b"]
    assert ds.ids == ["val/n01_a/img0.png", "val/n01_a/img1.JPEG", "val/n01_a/img2.png",
                      "val/n02_b/img0.png", "val/n02_b/img1.JPEG", "val/n02_b/extra/img9.png"]
    assert ds.labels == [0, 0, 0, 1, 1, 1]
    # n02_b/img0.png is the solid (124, 116, 104) image (written first): 300x200 -> 384x256 -> 224x224.
    x, label = ds[3]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and label == 1
    rgb = np.float32([124, 116, 104]) / np.float32(255)
    expected = (rgb - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)  # ~ (0.0056, 0.0212, 0.0025)
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), expected, rtol=0, atol=1e-6)
    assert float((x - x.mean(dim=(1, 2), keepdim=True)).abs().max()) < 1e-6  # constant after resize + crop
    # Same order and labels as torchvision's ImageFolder (listed here without importing torchvision).
    reference = ImageFolder(root / "val")
    assert IMG_EXTENSIONS == TV_IMG_EXTENSIONS
    assert [(str(p), y) for p, y in zip(ds.paths, ds.labels)] == reference.samples
    # The analysis dataset for params with kind: imagefolder, split test = val_dir.
    params = validate_params({"dataset": {"kind": "imagefolder", "imagefolder": {"root": str(root)}}})
    assert open_dataset(params["dataset"], "test").ids == ds.ids


def _write_photo_like_tree(root):
    """Train and val folders of textured images (a smooth gradient plus seeded noise, where the resize
    interpolation matters), PNG and JPEG, landscape and portrait, none already at 256 px."""
    rng = np.random.default_rng(7)
    for split in ("train", "val"):
        for cls, (name, size) in {"n01_a": ("img0.JPEG", (300, 200)), "n02_b": ("img1.png", (237, 411))}.items():
            w, h = size
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
            pixels = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
            path = root / split / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=90)
    return root


def test_paper_preset_analysis_and_evaluation_transforms(tmp_path):
    from timm.data import create_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision import transforms as T

    from pipeline_steps.config import load_params
    from pipeline_steps.training.recipe import Recipe
    from pipeline_steps.training.augment import training_view

    root = _write_photo_like_tree(tmp_path / "imagenet")
    params = load_params([REPO / "configs" / "paper.yaml"])
    params["dataset"]["imagefolder"]["root"] = str(root)
    analysis = open_dataset(params["dataset"], "test")
    evaluation = open_dataset(params["dataset"], "test", preprocessing="evaluation")
    normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    # The paper's analysis preprocessing, and DeiT's evaluation transform (datasets.build_transform with
    # is_train=False: Resize(int(224 / 0.875)) with interpolation 3 = bicubic, CenterCrop 224).
    expected_analysis = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(224),
                                   T.ToTensor(), normalize])
    expected_eval = T.Compose([T.Resize(int(224 / 0.875), interpolation=T.InterpolationMode.BICUBIC),
                               T.CenterCrop(224), T.ToTensor(), normalize])
    timm_eval = create_transform(224, is_training=False, interpolation="bicubic", crop_pct=0.875)
    for index in range(len(analysis)):
        image = Image.open(analysis.paths[index]).convert("RGB")
        x_analysis, x_eval = analysis[index][0], evaluation[index][0]
        assert x_analysis.shape == x_eval.shape == (3, 224, 224)
        assert torch.equal(x_analysis, expected_analysis(image))
        assert torch.equal(x_eval, expected_eval(image))
        torch.testing.assert_close(x_eval, timm_eval(image), rtol=0, atol=1e-6)
        assert (x_eval - x_analysis).abs().mean() > 0.01  # bicubic vs bilinear: visibly different inputs

    # Training (paper recipe: RandAugment, random erasing): timm's DeiT transform with the evaluation
    # transform's crop size, mean and std, and colour jitter 0.4 ...
    def training_steps(params: dict, **recipe_changes) -> list:
        train_set = open_dataset(params["dataset"], "train", preprocessing="evaluation")
        recipe = Recipe.from_params({**params["distill"]["train"], **recipe_changes})
        return training_view(train_set, recipe).transform.transforms

    def crop_mean_std(steps: list) -> tuple:
        (crop,) = [t for t in steps if isinstance(t, RandomResizedCropAndInterpolation)]
        (norm,) = [t for t in steps if isinstance(t, T.Normalize)]
        return crop.size, crop.interpolation, norm.mean.tolist(), norm.std.tolist()

    steps = training_steps(params)
    assert crop_mean_std(steps) == ((224, 224), T.InterpolationMode.BICUBIC, pytest.approx([0.485, 0.456, 0.406]),
                                    pytest.approx([0.229, 0.224, 0.225]))
    # ... which timm (as DeiT) leaves out while RandAugment is on; without RandAugment it is there, at 0.4.
    assert not any(isinstance(t, T.ColorJitter) for t in steps)
    (jitter,) = [t for t in training_steps(params, randaugment=None) if isinstance(t, T.ColorJitter)]
    for factor in (jitter.brightness, jitter.contrast, jitter.saturation):
        assert factor == pytest.approx((0.6, 1.4))
    # No silent fallback to either transform's defaults: an incomplete one is named.
    with pytest.raises(UserError, match="dataset.eval_preprocess lacks interpolation, mean, resize, std"):
        ImageFolderDataset(root, "val", {"crop": 224}, key="dataset.eval_preprocess")
    # The training crop, mean and std follow dataset.eval_preprocess (not the analysis preprocessing).
    params["dataset"]["eval_preprocess"] = {**params["dataset"]["eval_preprocess"], "crop": 160,
                                            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert crop_mean_std(training_steps(params)) == ((160, 160), T.InterpolationMode.BICUBIC, [0.5] * 3, [0.25] * 3)


# --- sampling ----------------------------------------------------------------------------------------


def test_manifest_random_is_seeded(tiny_npz):
    ds = SyntheticDataset(tiny_npz, "test")
    a = sample_manifest(ds, 12, "random", 3, "test", progress=False)
    b = sample_manifest(ds, 12, "random", 3, "test", progress=False)
    c = sample_manifest(ds, 12, "random", 4, "test", progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert a["index"].tolist() != c["index"].tolist()
    assert list(a.columns) == list(MANIFEST_COLUMNS)
    assert a["position"].tolist() == list(range(12)) and a["index"].is_unique
    assert a["index"].is_monotonic_increasing  # fed in dataset order
    row = a.iloc[0]
    assert row["id"] == f"synthetic/test/{row['index']}" and row["class_name"] == CLASS_NAMES[row["label"]]
    assert row["content_hash"] == ds.content_hash(int(row["index"]))
    assert (a["split"] == "test").all() and (a["strategy"] == "random").all() and (a["seed"] == 3).all()
    assert manifest_hash(a) == manifest_hash(b) != manifest_hash(c)
    reordered = a.assign(position=a["position"][::-1].to_numpy())
    assert manifest_hash(reordered) != manifest_hash(a)  # order-sensitive


def test_manifest_stratified_and_first(tiny_npz):
    ds = SyntheticDataset(tiny_npz, "test")
    strat = sample_manifest(ds, 23, "stratified", 0, "test", progress=False)
    counts = np.bincount(strat["label"], minlength=10)
    assert counts.sum() == 23 and sorted(counts.tolist()) == [2] * 7 + [3] * 3
    first = sample_manifest(ds, 7, "first", 0, "test", progress=False)
    assert first["index"].tolist() == list(range(7))
    assert first["label"].tolist() == ds.labels[:7]


class _FakeDataset:
    """Just what sampling needs: ids, labels, classes and a content hash."""

    def __init__(self, labels, classes):
        self.labels, self.classes = list(labels), list(classes)
        self.ids = [f"fake/{i}" for i in range(len(self.labels))]

    def __len__(self):
        return len(self.labels)

    def content_hash(self, index):
        return hashlib.sha256(self.ids[index].encode()).hexdigest()


def test_manifest_rejects_impossible_requests():
    ds = _FakeDataset([0] * 10 + [1] * 2, ["a", "b"])
    assert np.bincount(sample_manifest(ds, 4, "stratified", 0, "test", progress=False)["label"]).tolist() == [2, 2]
    with pytest.raises(UserError, match="needs 4 images of class 'b' but the test split has only 2"):
        sample_manifest(ds, 8, "stratified", 0, "test", progress=False)
    with pytest.raises(UserError, match="sample.n_images = 13 but the test split has only 12 images; lower"):
        sample_manifest(ds, 13, "random", 0, "test", progress=False)
    with pytest.raises(UserError, match="unknown sample.strategy"):
        sample_manifest(ds, 2, "bogus", 0, "test", progress=False)


def test_manifest_dataset_feeds_in_order_and_detects_changes(tmp_path):
    root = _write_tree(tmp_path / "imagenet")
    ds = ImageFolderDataset(root, "val", PREPROCESS)
    out = tmp_path / "manifest.parquet"
    manifest = sample.run(out, ds, n_images=3, strategy="first", seed=0, split="test", progress=False)
    stored = pd.read_parquet(out)
    pd.testing.assert_frame_equal(stored, manifest)
    assert stored["content_hash"][1] == sha256_file(root / "val/n01_a/img1.JPEG")
    fed = ManifestDataset(ds, stored.iloc[::-1])  # row order in the file does not matter, position does
    assert fed.ids == ds.ids[:3] and fed.hash == manifest_hash(stored)
    assert torch.equal(fed[1][0], ds[1][0])
    Image.new("RGB", (300, 200), (1, 2, 3)).save(root / "val/n01_a/img1.JPEG")
    assert fed[0][1] == 0  # unchanged images still load
    with pytest.raises(UserError, match="val/n01_a/img1.JPEG changed since it was sampled"):
        fed[1]
    (root / "val/n01_a/img0.png").unlink()
    with pytest.raises(UserError, match="no longer matches the sample manifest"):
        ManifestDataset(ImageFolderDataset(root, "val", PREPROCESS), stored)


def test_manifest_dataset_detects_changed_synthetic_pixels(tiny_npz):
    ds = SyntheticDataset(tiny_npz, "test")
    fed = ManifestDataset(ds, sample_manifest(ds, 4, "random", 0, "test", progress=False))
    index = fed.indices[2]
    assert torch.equal(fed[2][0], ds[index][0])
    ds.images[index, 0, 0, 0] ^= 1
    with pytest.raises(UserError, match=f"synthetic/test/{index} changed since it was sampled"):
        fed[2]


# --- the steps through the CLI -----------------------------------------------------------------------


def test_cli_generate_then_sample(tmp_path):
    data, out = tmp_path / "synthetic.npz", tmp_path / "samples" / "manifest.parquet"
    cfg = {"dataset": {"synthetic": {"train_size": 30, "test_size": 20, "image_size": 16, "num_classes": 4}}}
    run_step("generate-data", "--config-json", json.dumps(cfg), "--out", str(data), check=True)
    assert load_synthetic(data).test_images.shape == (20, 16, 16, 3)
    cfg["sample"] = {"n_images": 8, "strategy": "stratified", "seed": 1}
    run_step("sample", "--config-json", json.dumps(cfg), "--data", str(data), "--out", str(out), check=True)
    manifest = pd.read_parquet(out)
    assert np.bincount(manifest["label"]).tolist() == [2, 2, 2, 2]
    assert manifest["id"].str.startswith("synthetic/test/").all()
    assert [p.name for p in out.parent.iterdir()] == ["manifest.parquet"]  # no temp files left


def test_cli_generate_data_refuses_imagefolder(tmp_path):
    out = tmp_path / "synthetic.npz"
    cfg = {"dataset": {"kind": "imagefolder", "imagefolder": {"root": str(tmp_path)}}}
    proc = run_step("generate-data", "--config-json", json.dumps(cfg), "--out", str(out))
    assert_one_line_error(proc, "only for dataset.kind: synthetic")
    assert not out.exists()


def _no_class_folders(root):
    (root / "val").mkdir(parents=True)


def _empty_class(root):
    _write_tree(root)
    (root / "val" / "n03_empty").mkdir()
    (root / "val" / "n03_empty" / "readme.txt").write_text("no images here")


def _corrupt_image(root):
    _write_tree(root)
    path = root / "val" / "n01_a" / "img1.JPEG"
    path.write_bytes(path.read_bytes()[:400])  # truncated: the bytes hash fine, decoding fails


@pytest.mark.parametrize("make, fragments", [
    (lambda root: None, ["data directory", "val not found", "dataset.imagefolder.root"]),
    (_no_class_folders, ["has no class folders"]),
    (_empty_class, ["class folder", "n03_empty has no images"]),
    (_corrupt_image, ["img1.JPEG is unreadable or corrupt", "replace or remove it"]),
], ids=["missing", "no-classes", "empty-class", "corrupt-image"])
def test_cli_sample_imagefolder_errors(tmp_path, make, fragments):
    root = tmp_path / "imagenet"
    make(root)
    out = tmp_path / "manifest.parquet"
    cfg = {"dataset": {"kind": "imagefolder", "imagefolder": {"root": str(root)}},
           "sample": {"n_images": 4, "strategy": "first"}}
    proc = run_step("sample", "--config-json", json.dumps(cfg), "--out", str(out))
    assert_one_line_error(proc, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("n_images, data, fragments", [
    (4, "missing.npz", ["generated dataset not found", "missing.npz", "run the generate-data step"]),
    (50000, None, ["sample.n_images = 50000 but the test split has only 50 images; lower sample.n_images"]),
], ids=["artifact-missing", "too-many"])
def test_cli_sample_synthetic_errors(tmp_path, tiny_npz, n_images, data, fragments):
    out = tmp_path / "manifest.parquet"
    data = str(tmp_path / data) if data else tiny_npz
    cfg = {"sample": {"n_images": n_images}}
    proc = run_step("sample", "--config-json", json.dumps(cfg), "--data", data, "--out", str(out))
    assert_one_line_error(proc, *fragments)
    assert not out.exists()
