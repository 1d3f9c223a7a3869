"""The data path: decode once into the cache, stream uint8 batches, other inputs, no TensorFlow on JAX."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import vitkit
from vitkit.data.cache import ImageStore
from vitkit.data.batches import ImageBatches
from vitkit.data.imageset import load_images
from vitkit.errors import ConfigError
from vitkit.data.images import load_image
from vitkit.data.textarray import TextArray

from conftest import run_python


def test_images_are_decoded_once_and_reused(photo_tree, tmp_path):
    paths = sorted(photo_tree.rglob("*.png"))
    store = ImageStore((24, 24), "stretch", tmp_path / "cache")
    frames, failures = store.frames(paths, progress=False)
    assert not failures and store.decoded == len(paths)
    again = ImageStore((24, 24), "stretch", tmp_path / "cache")  # a later run
    assert np.array_equal(again.frames(paths, progress=False)[0], frames)
    assert again.decoded == 0
    for frame, path in zip(frames[:5], paths[:5]):
        np.testing.assert_array_equal(again.read([frame])[0], load_image(path, (24, 24)))


def test_changed_file_is_decoded_again(photo_tree, tmp_path):
    path = sorted(photo_tree.rglob("*.png"))[0]
    store = ImageStore((16, 16), "stretch", tmp_path / "cache")
    store.frames([path], progress=False)
    from PIL import Image

    Image.new("RGB", (30, 30), (1, 2, 3)).save(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    frames, _ = store.frames([path], progress=False)
    assert store.decoded == 2
    assert tuple(store.read(frames)[0, 0, 0]) == (1, 2, 3)


def test_text_array_stands_in_for_a_list_of_names():
    texts = ["a.png", "写真/b.png", "", "not-utf8-\udcff.png"]
    names = TextArray.from_texts(texts)
    assert names == texts and list(names) == texts and len(names) == 4
    assert (names[-1], names[np.int64(1)]) == (texts[-1], texts[1])
    assert names[1:3] == texts[1:3] and names[[3, 0]] == [texts[3], texts[0]]
    assert names.take(np.array([True, False, True, False])) == ["a.png", ""]
    assert names.nbytes == sum(len(text.encode("utf-8", "surrogatepass")) for text in texts) + 8 * len(texts)
    assert names != texts[:3] and names != "a.png"
    with pytest.raises(IndexError):
        names[4]
    with pytest.raises(IndexError):
        names[[0, 4]]
    assert TextArray.from_texts([]) == [] and TextArray.from_texts([])[[]] == []


def test_image_sets_name_their_files_in_a_text_array(photo_tree, tmp_path):
    images = load_images(photo_tree, (16, 16), cache_dir=tmp_path / "cache", progress=False)
    files = sorted(str(path) for path in photo_tree.rglob("*.png"))
    assert isinstance(images.names, TextArray) and images.names == files
    part = images.subset([4, 1])
    assert part.names == [files[4], files[1]] and part.labels == [images.labels[4], images.labels[1]]
    assert np.array_equal(part.all_pixels(), images.read(np.array([4, 1])))


def test_lookups_in_blocks_find_the_same_frames_and_failures(photo_tree, tmp_path, monkeypatch):
    import vitkit.data.cache as cache

    paths = sorted(photo_tree.rglob("*.png"))[:7]
    paths.insert(3, photo_tree / "missing.png")
    whole = ImageStore((16, 16), "stretch", tmp_path / "whole").frames(paths, progress=False)
    monkeypatch.setattr(cache, "_LOOKUP_BLOCK", 2)
    store = ImageStore((16, 16), "stretch", tmp_path / "blocks")
    frames, failures = store.frames(paths, progress=False)
    assert failures == whole[1] == {3: f"{paths[3]}: file not found"}
    assert np.array_equal(frames, whole[0]) and store.decoded == 7
    later = ImageStore((16, 16), "stretch", tmp_path / "blocks")
    assert np.array_equal(later.frames(paths, progress=False)[0], frames) and later.decoded == 0
    first = ImageStore((16, 16), "stretch", tmp_path / "stop")
    frames, failures = first.frames(paths, progress=False, stop_at_failure=True)
    assert list(failures) == [3] and (frames[:3] >= 0).all() and (frames[4:] == -1).all()


def test_each_size_and_resize_mode_has_its_own_store(photo_tree, tmp_path):
    paths = sorted(photo_tree.rglob("*.png"))[:3]
    for size, mode in (((16, 16), "stretch"), ((16, 16), "pad"), ((20, 16), "stretch")):
        store = ImageStore(size, mode, tmp_path / "cache")
        frames, _ = store.frames(paths, progress=False)
        assert store.decoded == 3 and store.read(frames).shape == (3, *size, 3)


def test_training_epochs_decode_nothing(photo_tree, tmp_path):
    images = load_images(photo_tree, (24, 24), cache_dir=tmp_path / "cache", progress=False)
    decoded = ImageStore((24, 24), "stretch", tmp_path / "cache")
    calls = []
    import vitkit.data.cache as cache

    original = cache.load_image
    cache.load_image = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        batches = ImageBatches(load_images(photo_tree, (24, 24), cache_dir=tmp_path / "cache", progress=False),
                               batch_size=5, shuffle=True)
        for _ in range(2):
            for i in range(len(batches)):
                batches[i]
            batches.on_epoch_end()
    finally:
        cache.load_image = original
    assert calls == [] and decoded.decoded == 0 and len(images) == 24


def test_batches_are_uint8_with_one_hot_labels_and_seeded_order(shape_arrays):
    x, y = shape_arrays
    images = load_images((x, y), (32, 32))
    batches = ImageBatches(images, 16, class_names=["circle", "square", "triangle"], shuffle=True, seed=7)
    pixels, targets = batches[0]
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 32, 32, 3)
    assert targets.shape == (16, 3) and np.all(targets.sum(1) == 1)
    first_epoch = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert sorted(first_epoch.argmax(1)) == sorted(images.label_indices(["circle", "square", "triangle"]))
    replay = ImageBatches(images, 16, class_names=["circle", "square", "triangle"], shuffle=True, seed=7)
    np.testing.assert_array_equal(replay[0][0], pixels)
    batches.on_epoch_end()
    assert not np.array_equal(batches[0][0], pixels)


def test_shards_cover_an_epoch_once(shape_arrays):
    x, y = shape_arrays
    images = load_images((np.arange(len(x)).reshape(-1, 1, 1, 1) * np.ones((1, 4, 4, 3), np.uint8), y), (4, 4))
    seen = []
    for index in range(3):
        shard = ImageBatches(images, 4, shuffle=True, seed=1, shard=(index, 3), multiple_of=3)
        seen += [int(v) for i in range(len(shard)) for v in shard[i][0][:, 0, 0, 0]]
    assert sorted(seen) == list(range(len(images)))


def test_array_inputs_are_resized_and_checked():
    grey = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.float32)
    images = load_images(grey, (32, 32))
    assert images.all_pixels().shape == (5, 32, 32, 3) and images.labels is None
    with pytest.raises(ConfigError, match="0 to 255"):
        load_images(grey * 2, (32, 32))


def test_pixel_csv_of_the_digit_notebooks(tmp_path):
    rows = ["label," + ",".join(f"pixel{i}" for i in range(16))]
    rows += [f"{d}," + ",".join(str((d * 16 + i) % 256) for i in range(16)) for d in (3, 7)]
    (tmp_path / "digits.csv").write_text("\n".join(rows) + "\n")
    images = load_images(tmp_path / "digits.csv", (8, 8))
    assert images.labels == ["3", "7"]
    pixels = images.all_pixels()
    assert pixels.shape == (2, 8, 8, 3) and np.all(pixels[..., 0] == pixels[..., 2])


def test_api_reexports_the_loader():
    assert vitkit.load_images is load_images


_JAX_DATA_PATH = """
import sys, numpy as np
from pathlib import Path
from vitkit.data.batches import ImageBatches
from vitkit.data.imageset import load_images
images = load_images(Path({photos!r}), (24, 24), cache_dir={cache!r}, progress=False)
batches = ImageBatches(images, 8, class_names=sorted(set(images.labels)), shuffle=True)
x, y = batches[0]
import keras, vitkit
model = vitkit.build_model(sorted(set(images.labels)), backbone={backbone!r}, image_size=24)
model.predict(x, verbose=0)
assert keras.backend.backend() == "jax"
print("tensorflow" in sys.modules, x.dtype, x.shape)
"""


@pytest.mark.slow
def test_jax_backend_never_imports_tensorflow(photo_tree, tmp_path):
    code = _JAX_DATA_PATH.format(photos=str(photo_tree), cache=str(tmp_path / "cache"),
                                 backbone={"patch_size": 8, "num_layers": 1, "hidden_size": 16,
                                           "num_heads": 2, "mlp_dim": 32})
    finished = run_python(code, backend="jax")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["False", "uint8", "(8,", "24,", "24,", "3)"]
