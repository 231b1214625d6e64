"""Image data: the image-folder layout in folders and archives, errors that name the file,
the decoded-image cache, scikit-learn's digits, and the training augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vision_data import CLASSES, make_archive, make_image_folder

from torchformer.data import images as images_module
from torchformer.data.augment import AugmentConfig, augment_batch
from torchformer.data.images import ImageDataError, load_digits_splits, read_image_folder


def test_a_folder_and_its_archive_decode_to_the_same_tensors(tmp_path, shapes_folder):
    archive = make_archive(shapes_folder, tmp_path / "shapes.tar.gz")
    from_dir, classes = read_image_folder(shapes_folder)
    from_tar, tar_classes = read_image_folder(archive)
    assert classes == tar_classes == sorted(CLASSES)
    assert set(from_dir) == set(from_tar) == {"train", "test"}
    for split in from_dir:
        a, b = from_dir[split], from_tar[split]
        assert a.pixels.dtype == torch.uint8 and a.pixels.shape == (len(a), 3, 16, 16)
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.labels, b.labels)
        assert [f"shapes/{n}" for n in a.names] == b.names  # the archive's root folder is kept
    assert from_dir["train"].labels.bincount().tolist() == [40, 40, 40]
    # The PNGs hold exactly the drawn pixels: the first "hbar" training image round-trips.
    first = np.array(Image.open(shapes_folder / "train" / "hbar" / "000.png"))
    assert torch.equal(from_dir["train"].pixels[0], torch.from_numpy(first).permute(2, 0, 1))


def test_an_unreadable_image_names_the_archive_and_member_or_is_skipped_and_counted(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class={"train": 3})
    (root / "train" / "vbar" / "broken.jpg").write_bytes(b"not a jpeg at all")
    archive = make_archive(root, tmp_path / "data.tar.gz", arcname="data")
    with pytest.raises(ImageDataError) as e:
        read_image_folder(archive)
    assert "data.tar.gz" in str(e.value) and "data/train/vbar/broken.jpg" in str(e.value)
    splits, _ = read_image_folder(archive, skip_bad_images=True)
    assert len(splits["train"]) == 9 and splits["train"].skipped == {"unreadable image": 1}


def test_a_label_the_training_split_lacks_and_mixed_sizes_are_named(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class={"train": 2, "test": 1})
    (root / "test" / "circle").mkdir()
    Image.new("RGB", (16, 16)).save(root / "test" / "circle" / "0.png")
    with pytest.raises(ImageDataError, match=r"test/circle/0\.png: label 'circle'"):
        read_image_folder(root)
    root = make_image_folder(tmp_path / "sizes", per_class={"train": 2})
    Image.new("RGB", (20, 12)).save(root / "train" / "hbar" / "wide.png")
    with pytest.raises(ImageDataError, match=r"train/hbar/wide\.png: image of shape \(3, 12, 20\)"):
        read_image_folder(root)
    splits, _ = read_image_folder(root, size=8, channels=1)  # resized and converted instead
    assert splits["train"].pixels.shape == (7, 1, 8, 8)


def test_no_image_in_the_layout_is_an_error_naming_the_expected_layout(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")  # no <split>/<label>/
    with pytest.raises(ImageDataError, match=r"<split>/<label>/<file>"):
        read_image_folder(tmp_path / "flat")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        read_image_folder(tmp_path / "missing")


def test_the_cache_returns_the_decoded_tensors_without_reading_the_source(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class={"train": 2, "test": 1})
    first, classes = read_image_folder(root, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 1

    def no_reading(*args):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(images_module, "_members", no_reading)
    again, again_classes = read_image_folder(root, cache_dir=tmp_path / "cache")
    assert again_classes == classes
    assert all(torch.equal(first[s].pixels, again[s].pixels) for s in first)
    assert all(first[s].names == again[s].names for s in first)
    with pytest.raises(AssertionError, match="read again"):  # other settings: another key
        read_image_folder(root, cache_dir=tmp_path / "cache", size=8)


def test_digits_are_stratified_uint8_splits_of_the_bundled_data():
    pytest.importorskip("sklearn")
    splits, classes = load_digits_splits(seed=0)
    train, test = splits["train"], splits["test"]
    assert classes == [str(d) for d in range(10)]
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.pixels.shape[1:] == (1, 8, 8) and train.pixels.dtype == torch.uint8
    assert int(train.pixels.max()) == 255 and int(train.pixels.min()) == 0
    whole = (train.labels.bincount() + test.labels.bincount()).tolist()
    counts = test.labels.bincount().tolist()
    assert all(abs(c - 0.2 * n) <= 1 for c, n in zip(counts, whole))  # stratified
    assert not set(train.names) & set(test.names)


def batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_crop_and_flip_shift_and_mirror_pixels_and_are_reproducible_under_the_seed():
    x = batch()
    assert torch.equal(augment_batch(x, AugmentConfig(crop_padding=0, hflip=False)), x)
    torch.manual_seed(3)
    a = augment_batch(x, AugmentConfig(crop_padding=2, hflip=True))
    torch.manual_seed(3)
    b = augment_batch(x, AugmentConfig(crop_padding=2, hflip=True))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8
    assert not torch.equal(a, x)
    # Each output is the input shifted by at most 2 pixels (zeros fill), maybe mirrored.
    for i in range(len(x)):
        found = False
        for image in (x[i], x[i].flip(-1)):
            padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
            found |= any(
                torch.equal(padded[:, y : y + 8, s : s + 8], a[i])
                for y in range(5)
                for s in range(5)
            )
        assert found, i
    one = x[:1].expand(400, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = augment_batch(one, AugmentConfig(crop_padding=0))
    mirrored = (out == one.flip(-1)).flatten(1).all(1).float().mean()
    assert (out == one).flatten(1).all(1).float().mean() + mirrored == 1.0
    assert 0.4 < float(mirrored) < 0.6  # half are mirrored


def test_random_erasing_fills_one_rectangle_and_bad_settings_are_refused():
    x = torch.zeros(8, 3, 16, 16, dtype=torch.uint8)
    torch.manual_seed(0)
    erased = augment_batch(x, AugmentConfig(crop_padding=0, hflip=False, erase_prob=1.0))
    changed = erased.ne(0).any(1)  # (B, H, W)
    for mask in changed:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert (
            len(rows)
            and mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].float().mean() > 0.9
        )
    with pytest.raises(ValueError, match="crop_padding"):
        AugmentConfig(crop_padding=-1)
    with pytest.raises(ValueError, match="erase_prob"):
        AugmentConfig(erase_prob=1.5)
    with pytest.raises(ValueError, match="expected a"):
        augment_batch(x[0], AugmentConfig())


def test_an_example_is_augmented_by_its_own_seed_whatever_batch_it_is_in():
    from torchformer.data.augment import example_generators

    x = batch(1)
    config = AugmentConfig(crop_padding=2, hflip=True, erase_prob=0.5)
    whole = augment_batch(x, config, example_generators(7, 3, list(range(16))))
    part = augment_batch(x[[5, 2]], config, example_generators(7, 3, [5, 2]))
    assert torch.equal(part, whole[[5, 2]])  # another batch, another size: the same images
    other_epoch = augment_batch(x, config, example_generators(7, 4, list(range(16))))
    assert not torch.equal(other_epoch, whole)
    with pytest.raises(ValueError, match="2 generators for a batch of 16"):
        augment_batch(x, config, example_generators(7, 3, [0, 1]))


def test_a_file_added_to_a_cached_folder_is_decoded_again(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class={"train": 2})
    first, _ = read_image_folder(root, cache_dir=tmp_path / "cache")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(root / "train" / "square" / "new.png")
    again, _ = read_image_folder(root, cache_dir=tmp_path / "cache")
    assert len(again["train"]) == len(first["train"]) + 1
    assert "train/square/new.png" in again["train"].names
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 2  # a new key, a new file


def labelled_split(counts: list[int]):
    from torchformer.data.images import ImageSplit

    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    n = len(labels)
    return ImageSplit(
        torch.zeros(n, 1, 2, 2, dtype=torch.uint8), labels, [f"{i}.png" for i in range(n)]
    )


def test_a_sample_takes_the_classes_in_turn_and_is_seeded():
    from torchformer.tasks.image_classify import _balanced_sample

    split = labelled_split([10, 3, 7])
    sample = _balanced_sample(split, 9, seed=0)
    assert sample.labels.bincount().tolist() == [3, 3, 3]
    assert set(sample.names) <= set(split.names) and len(set(sample.names)) == 9
    short = _balanced_sample(split, 14, seed=0)  # class 1 runs out: the others fill in
    assert short.labels.bincount().tolist() == [6, 3, 5]
    assert _balanced_sample(split, 9, seed=0).names == sample.names
    assert _balanced_sample(split, 9, seed=1).names != sample.names
    assert (
        _balanced_sample(split, None, seed=0) is split and _balanced_sample(split, 20, 0) is split
    )


def test_the_held_out_share_is_stratified_and_every_class_keeps_one():
    from torchformer.tasks.image_classify import _hold_out

    split = labelled_split([40, 20, 3])
    train, val = _hold_out(split, 0.1, seed=0)
    assert val.labels.bincount().tolist() == [4, 2, 1]  # round(0.3) = 0, but at least 1
    assert sorted(train.names + val.names, key=lambda s: int(s[:-4])) == split.names
    with pytest.raises(ValueError, match=r"data.val_fraction must be in \(0, 1\), got 1.0"):
        _hold_out(split, 1.0, seed=0)
