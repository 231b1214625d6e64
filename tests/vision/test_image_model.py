"""The image task's model and settings without a training run: the ViT built from the
config (a preset with overridden sizes, or a pretrained checkpoint fine-tuned at another
resolution), the labels and channels a classifier reports, the normalisation of a plain
Hugging Face directory, and the optimiser and schedule the config asks for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from vision_data import make_image_folder, vit_config

from torchformer.checkpoints import load_pretrained, save_pretrained
from torchformer.models.vit import ViTForImageClassification, interpolate_positions, preset
from torchformer.tasks.image_classifier import ImageClassifier, Normalization
from torchformer.tasks.image_classify import ImageClassificationTask, build_model

CLASSES = ["hbar", "square", "vbar"]


def tiny_vit(**overrides) -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(preset("vit-tiny-test", **overrides))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A Hugging Face ViT directory: 16×16 images, 4×4 patches, five classes."""
    out = tmp_path_factory.mktemp("pretrained") / "vit"
    labels = dict(enumerate("abcde"))
    save_pretrained(tiny_vit(num_labels=5, id2label=labels), out)
    return out


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("small"), per_class={"train": 4, "test": 1})


def positions(model: ViTForImageClassification) -> torch.Tensor:
    return model.vit.embeddings.position_embeddings.detach()


def test_labels_missing_from_id2label_are_named_by_their_index():
    model = tiny_vit(id2label={0: "cat", 2: "dog"})  # three classes, one unnamed
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 8.0, 0.0]))  # the unnamed class wins
    clf = ImageClassifier(model, Normalization(size=16))
    assert clf.labels == ["cat", "1", "dog"] and clf.channels == 3
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    prediction = clf.predict(image)[0]
    assert list(prediction["probabilities"]) == ["cat", "1", "dog"] and prediction["label"] == "1"
    assert prediction["confidence"] == max(prediction["probabilities"].values()) > 0.9
    grey = ImageClassifier(tiny_vit(num_channels=1), Normalization(size=16, mean=[0.5], std=[0.5]))
    assert grey.channels == 1 and grey.labels == ["0", "1", "2"]
    onnx_like = ImageClassifier(None, Normalization(size=16), labels=["x", "y"])
    assert onnx_like.channels == 3 and onnx_like.labels == ["x", "y"] and onnx_like.model is None
    assert ImageClassifier(None, Normalization(size=8), channels=1).channels == 1


def test_a_hugging_face_directory_without_a_processor_file_uses_vits_statistics(tmp_path):
    save_pretrained(tiny_vit(num_channels=1, image_size=8, patch_size=2), tmp_path / "grey")
    clf = ImageClassifier.from_dir(tmp_path / "grey", attn_impl="reference")
    assert clf.normalization == Normalization(size=8, mean=[0.5], std=[0.5])
    assert isinstance(clf.model, ViTForImageClassification)
    assert clf.model.config.attn_impl == "reference" and clf.labels == [
        "LABEL_0",
        "LABEL_1",
        "LABEL_2",
    ]
    assert clf.channels == 1 and clf.to_pixels(np.zeros((20, 20), np.uint8)).shape == (1, 1, 8, 8)
    out = clf.save(tmp_path / "saved")
    assert json.loads((out / "image_classification.json").read_text())["channels"] == 1
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 8, "width": 8} and processor["image_mean"] == [0.5]
    assert processor["do_resize"] is True and processor["do_rescale"] is True


def test_a_processor_file_without_a_size_or_height_takes_the_models_size(tmp_path):
    base = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.3, 0.2, 0.1]}
    for name, extra in (("none", {}), ("edge", {"size": {"shortest_edge": 224}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "preprocessor_config.json").write_text(json.dumps(base | extra))
        norm = Normalization.read(tmp_path / name, default_size=32)
        assert norm == Normalization(size=32, mean=[0.1, 0.2, 0.3], std=[0.3, 0.2, 0.1])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "preprocessor_config.json").write_text(json.dumps({"size": 16}))
    with pytest.raises(ValueError, match=r"preprocessor_config\.json: not a valid image processor"):
        Normalization.read(tmp_path / "bad", default_size=32)


def test_predicting_in_small_batches_gives_the_same_probabilities():
    clf = ImageClassifier(tiny_vit(), Normalization(size=16))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(5)]
    whole = clf.predict_proba(images)
    assert whole.shape == (5, 3)
    torch.testing.assert_close(clf.predict_proba(images, batch_size=2), whole)
    best = whole.argmax(-1).tolist()
    predictions = clf.predict(images, batch_size=2)
    assert [p["label"] for p in predictions] == [clf.labels[i] for i in best]
    assert [p["confidence"] for p in predictions] == pytest.approx(whole.max(-1).values.tolist())


def test_a_scratch_vit_takes_the_configured_sizes_channels_and_regularisation(tmp_path):
    config = vit_config(tmp_path, "unused", **{
        "model.d_model": 48, "model.n_layers": 1, "model.n_heads": 3, "model.d_ff": 96,
        "model.patch_size": 8, "model.dropout": 0.1, "model.attn_dropout": 0.2,
        "model.head_dropout": 0.3, "model.pooling": "mean", "model.patch_embed": "linear",
        "model.attn_impl": "reference", "data.image_size": 32, "data.channels": 1})  # fmt: skip
    cfg = build_model(config, CLASSES).config
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.patch_size) == (48, 1, 3, 96, 8)
    assert (cfg.dropout, cfg.attn_dropout, cfg.head_dropout) == (0.1, 0.2, 0.3)
    assert (cfg.pooling, cfg.patch_embed, cfg.attn_impl) == ("mean", "linear", "reference")
    assert (cfg.image_size, cfg.num_channels) == (32, 1)
    assert cfg.num_labels == 3 and cfg.id2label == {0: "hbar", 1: "square", 2: "vbar"}
    plain = build_model(vit_config(tmp_path, "unused"), ["a", "b"]).config
    tiny = preset("vit-tiny-test")
    assert (plain.image_size, plain.d_model, plain.dropout) == (16, 32, tiny.dropout)
    assert plain.num_labels == 2 and plain.num_channels == 3


def test_fine_tuning_at_the_checkpoints_own_size_keeps_its_weights(pretrained, tmp_path):
    base, _ = load_pretrained(pretrained, task="classification")
    for size in (None, 16):
        config = vit_config(tmp_path, "unused", **{"model.base": str(pretrained),
                                                   "data.image_size": size})  # fmt: skip
        model = build_model(config, CLASSES)
        assert model.training and model.config.image_size == 16
        assert torch.equal(positions(model), positions(base))
        assert model.config.num_labels == 3 and model.config.id2label == dict(enumerate(CLASSES))
        assert model.classifier.weight.shape[0] == 3


def test_fine_tuning_at_another_size_resizes_the_position_table(pretrained, tmp_path):
    base, _ = load_pretrained(pretrained, task="classification")
    config = vit_config(tmp_path, "unused", **{
        "model.base": str(pretrained), "data.image_size": 32, "model.dropout": 0.25,
        "model.pooling": "mean", "model.attn_impl": "reference"})  # fmt: skip
    model = build_model(config, CLASSES)
    assert model.config.image_size == 32 and model.config.patch_size == 4
    assert (model.config.dropout, model.config.pooling, model.config.attn_impl) == (
        0.25, "mean", "reference")  # fmt: skip
    expected = interpolate_positions(positions(base), (8, 8))  # 32 / 4 patches a side
    assert positions(model).shape == (1, 1 + 64, 32)
    torch.testing.assert_close(positions(model), expected)
    logits = model.eval()(torch.zeros(2, 3, 32, 32)).logits
    assert logits.shape == (2, 3)


def test_preparing_reads_a_checkpoints_size_and_refuses_other_channels(
    pretrained, small_folder, tmp_path
):
    task = ImageClassificationTask(
        vit_config(tmp_path / "a", small_folder, **{"model.base": str(pretrained)})
    )
    model = task.prepare(tmp_path / "a", resume=False, main=True)
    assert task.splits["train"].pixels.shape[1:] == (3, 16, 16)  # the checkpoint's 16×16
    assert task.normalization.size == 16 and model.config.num_labels == 3
    grey = vit_config(tmp_path / "b", small_folder, **{"model.base": str(pretrained),
                                                       "data.channels": 1})  # fmt: skip
    with pytest.raises(ValueError, match=r"data\.channels=1 but the model takes 3 channels"):
        ImageClassificationTask(grey).prepare(tmp_path / "b", resume=False, main=True)


def test_preparing_a_scratch_model_decodes_at_the_presets_size(small_folder, tmp_path):
    settings = {"data.channels": 1, "data.val_fraction": 0.25, "model.preset": "vit-digits"}
    task = ImageClassificationTask(vit_config(tmp_path, small_folder, **settings))
    model = task.prepare(tmp_path, resume=False, main=True)
    assert task.splits["train"].pixels.shape[1:] == (1, 8, 8)  # 16×16 files, an 8×8 preset
    assert model.config.image_size == 8 and task.normalization.size == 8
    assert model.config.num_channels == 1 and len(task.normalization.mean) == 1
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 9, "val": 3, "test": 3}
    assert task.classes == CLASSES


@pytest.mark.parametrize("metric, mode", [("loss", "min"), ("accuracy", "max"),
                                          ("macro_f1", "max")])  # fmt: skip
def test_the_plateau_schedule_reduces_when_the_metric_stops_improving(tmp_path, metric, mode):
    config = vit_config(tmp_path, "unused", **{"train.schedule": "plateau", "train.metric": metric,
                                               "train.warmup_ratio": 0.1, "train.lr": 0.01})  # fmt: skip
    task = ImageClassificationTask(config)
    model = torch.nn.Linear(2, 2)
    optimizer = task.build_optimizer(model)
    scheduler = task.build_scheduler(optimizer, 100)
    assert scheduler.name == "plateau" and scheduler.plateau.mode == mode
    for _ in range(10):  # 10 warm-up steps (0.1 of 100)
        assert scheduler.lr < 0.01
        scheduler.step()
    assert scheduler.lr == pytest.approx(0.01)
    falling = [1.0, 0.9, 0.8, 0.7]  # a loss improving, an accuracy getting worse
    reduced = [scheduler.step_metric(v) for v in falling]
    assert reduced == ([False] * 4 if mode == "min" else [False, False, False, True])
    rising = ImageClassificationTask(config).build_scheduler(
        task.build_optimizer(torch.nn.Linear(2, 2)), 100
    )
    for _ in range(10):
        rising.step()
    reduced = [rising.step_metric(v) for v in reversed(falling)]
    assert reduced == ([False] * 4 if mode == "max" else [False, False, False, True])


def test_the_optimizer_uses_the_configured_rate_and_weight_decay(tmp_path):
    config = vit_config(tmp_path, "unused", **{"train.lr": 0.02, "train.weight_decay": 0.3})
    optimizer = ImageClassificationTask(config).build_optimizer(tiny_vit())
    assert {g["lr"] for g in optimizer.param_groups} == {0.02}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.3}


def test_the_default_cosine_schedule_decays_over_the_run(tmp_path):
    config = vit_config(tmp_path, "unused", **{"train.lr": 0.02, "train.warmup_ratio": 0.1})
    task = ImageClassificationTask(config)
    scheduler = task.build_scheduler(task.build_optimizer(torch.nn.Linear(2, 2)), 100)
    assert scheduler.name == "cosine" and scheduler.plateau is None
    rates = []
    for _ in range(100):
        scheduler.step()
        rates.append(scheduler.lr)
    assert rates[9] == pytest.approx(0.02)  # warm-up ends at step 10
    assert rates[54] == pytest.approx(0.01)  # half-way through the decay
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_the_written_processor_file_preprocesses_like_transformers(tmp_path):
    """transformers' ViTImageProcessor, reading our file, gives the pixels we feed the model."""
    transformers = pytest.importorskip("transformers")
    norm = Normalization(size=8, mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.25])
    norm.write(tmp_path)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    theirs = processor(images=image, return_tensors="pt")["pixel_values"]
    ours = norm.apply(torch.from_numpy(image).permute(2, 0, 1)[None])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_split_folders_take_the_configured_names(tmp_path):
    from torchformer.tasks.image_classify import load_image_splits

    source = make_image_folder(tmp_path / "src", per_class={"fit": 3, "dev": 2, "exam": 1})
    cfg = vit_config(tmp_path, source, **{"data.train_split": "fit", "data.val_split": "dev",
                                          "data.test_split": "exam"})  # fmt: skip
    splits, classes = load_image_splits(cfg, 16)
    assert classes == CLASSES
    assert [len(splits[r].names) for r in ("train", "val", "test")] == [9, 6, 3]
    assert all(n.startswith("dev/") for n in splits["val"].names)


def test_the_training_sample_is_drawn_with_the_runs_seed(tmp_path):
    from torchformer.tasks.image_classify import load_image_splits

    source = make_image_folder(tmp_path / "src", per_class={"train": 12, "test": 1})

    def sample(seed: int) -> list[str]:
        cfg = vit_config(tmp_path, source, **{"data.train_samples": 6, "train.seed": seed})
        return sorted(load_image_splits(cfg, 16)[0]["train"].names)

    first = sample(1)
    assert len(first) == 6 and first == sample(1)  # reproducible
    assert any(sample(s) != first for s in (2, 3, 4))  # and the seed's own


def test_a_splits_summary_averages_the_examples_losses():
    from torchformer.data.images import ImageSplit
    from torchformer.tasks.image_classify import summarize_examples

    split = ImageSplit(
        pixels=torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
        labels=torch.tensor([0, 1, 0, 1]),
        names=["a.png", "b.png", "c.png", "d.png"],
    )
    two = torch.tensor([2.0, 0.0])
    outputs = {0: (two, 0.1), 1: (two, 2.0), 2: (two.flip(0), 1.5), 3: (two.flip(0), 0.3)}
    summary = summarize_examples(split, outputs, ["x", "y"])
    assert summary["loss"] == pytest.approx((0.1 + 2.0 + 1.5 + 0.3) / 4)
    assert summary["accuracy"] == 0.5 and summary["confusion_matrix"] == [[1, 1], [1, 1]]
    assert {e["id"] for e in summary["errors"]} == {"b.png", "c.png"}


def test_image_files_of_any_size_are_resized_and_a_bad_one_is_named(pretrained, tmp_path):
    from PIL import Image

    from torchformer.data.images import ImageDataError

    clf = ImageClassifier.from_dir(pretrained)
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8))
    big.save(tmp_path / "big.png")
    from_file = clf.predict_proba([tmp_path / "big.png"])
    torch.testing.assert_close(from_file, clf.predict_proba([big]))  # resized to 16 alike
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageDataError, match=r"bad\.png"):
        clf.predict_proba([tmp_path / "big.png", tmp_path / "bad.png"])


def test_preparing_keeps_the_decoded_images_in_the_configured_cache(small_folder, tmp_path):
    cache = tmp_path / "cache"
    settings = {"data.channels": 1, "data.val_fraction": 0.25, "model.preset": "vit-digits",
                "data.cache_dir": str(cache)}  # fmt: skip
    ImageClassificationTask(vit_config(tmp_path, small_folder, **settings)).prepare(
        tmp_path, resume=False, main=True
    )
    assert cache.is_dir() and any(p.is_file() for p in cache.rglob("*"))


def test_each_examples_augmentation_is_seeded_by_the_run_not_the_global_generator(
    small_folder, tmp_path
):
    from torchformer.train.distributed import World

    settings = {"data.val_fraction": 0.25, "augment.crop_padding": 4, "augment.hflip": True}
    task = ImageClassificationTask(vit_config(tmp_path, small_folder, **settings))
    model = task.prepare(tmp_path, resume=False, main=True).eval()  # no dropout
    sampler = task.train_sampler(World())
    indices, cpu = [0, 1, 2, 3], torch.device("cpu")
    with torch.no_grad():
        torch.manual_seed(1)
        first = task.batch_loss(model, indices, cpu)
        torch.manual_seed(2)  # another global state: the same augmentation
        again = task.batch_loss(model, indices, cpu)
        sampler.set_epoch(1)  # another epoch: other crops and flips
        other_epoch = task.batch_loss(model, indices, cpu)
    assert torch.equal(first, again)
    assert not torch.equal(first, other_epoch)


def test_the_manifest_records_skipped_images_and_the_normalization(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class={"train": 4, "test": 1})
    (root / "train" / "vbar" / "broken.png").write_bytes(b"not a png at all")
    settings = {"data.val_fraction": 0.25, "data.skip_bad_images": True}
    task = ImageClassificationTask(vit_config(tmp_path, root, **settings))
    task.prepare(tmp_path, resume=False, main=True)
    extra = task.manifest()["extra"]
    assert extra["skipped_images"] == {"train": {"unreadable image": 1}}
    assert extra["normalization"] == vars(task.normalization)
    assert extra["normalization"]["size"] == 16 and len(extra["normalization"]["mean"]) == 3
    assert extra["sizes"] == {"train": 9, "val": 3, "test": 3} and extra["labels"] == CLASSES
    # the training data's fingerprint: the same images give the same one, others another
    fingerprint = task.manifest()["data_fingerprint"]
    assert fingerprint.startswith("9-")
    again = ImageClassificationTask(vit_config(tmp_path, root, **settings))
    again.prepare(tmp_path, resume=False, main=True)
    assert again.manifest()["data_fingerprint"] == fingerprint
    other = make_image_folder(tmp_path / "other", per_class={"train": 5, "test": 1})
    more = ImageClassificationTask(vit_config(tmp_path, other, **settings))
    more.prepare(tmp_path, resume=False, main=True)
    assert more.manifest()["data_fingerprint"] != fingerprint


def test_loading_a_run_whose_best_was_being_replaced_puts_the_previous_one_back(tmp_path):
    from torchformer.tasks.image_classify import load

    run = tmp_path / "run"
    save_pretrained(tiny_vit(num_labels=3, id2label=dict(enumerate(CLASSES))), run / ".best.old")
    clf = load(run)  # a crash between replace_dir's two renames left only .best.old
    assert (run / "best" / "config.json").is_file() and not (run / ".best.old").exists()
    assert clf.labels == CLASSES


def test_normalization_builds_its_statistics_on_the_pixels_device():
    # The meta device stands for an accelerator here: a CPU tensor mixed in would fail.
    norm = Normalization(size=4, mean=[0.5, 0.25, 0.75], std=[0.5, 0.5, 0.25])
    out = norm.apply(torch.zeros(2, 3, 4, 4, dtype=torch.uint8, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    cpu = norm.apply(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    assert cpu.flatten().tolist() == [1.0, 1.5, 1.0]  # (1 - mean) / std


def test_the_digits_are_split_with_the_runs_seed(tmp_path):
    pytest.importorskip("sklearn")
    from torchformer.tasks.image_classify import load_image_splits

    def test_pixels(seed: int) -> torch.Tensor:
        cfg = vit_config(tmp_path, "digits", **{"data.channels": 1, "train.seed": seed})
        return load_image_splits(cfg, 8)[0]["test"].pixels

    assert torch.equal(test_pixels(1), test_pixels(1))
    assert not torch.equal(test_pixels(1), test_pixels(2))


def test_a_channels_last_tensor_is_read_like_its_array():
    clf = ImageClassifier(tiny_vit(num_labels=3), Normalization(size=16))
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)  # resized to 16×16
    expected = clf.predict(hwc)[0]["probabilities"]
    for image in (torch.from_numpy(hwc), torch.from_numpy(hwc.transpose(2, 0, 1).copy())):
        got = clf.predict(image)[0]["probabilities"]  # (H, W, C) and (C, H, W) tensors
        assert got == pytest.approx(expected, abs=1e-6)


def test_the_digits_need_one_channel(tmp_path):
    from torchformer.tasks.image_classify import load_image_splits

    with pytest.raises(
        ValueError, match=r"^data\.channels: the digits are grey \(1 channel\), not 3$"
    ):
        load_image_splits(vit_config(tmp_path, "digits", **{"data.channels": 3}), 8)
