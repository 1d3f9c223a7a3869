"""The small-data recipe: recipe resolution, Mixup / CutMix maths, RandAugment, a tiny training run."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_BACKBONE
from vitkit.errors import ConfigError
from vitkit.data.mixing import MixConfig, MixedBatches, cutmix, mix_batch, mixup
from vitkit.training.recipes import PLAIN, RECIPES, SMALL_DATA, choose_recipe, describe, resolve_options

# Recipe resolution --------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, weights, backbone, expected", [
    (None, "auto", None, "plain"),                 # vit_b16 with ImageNet-21k: fine-tuning
    (None, "auto", "vit_b16", "plain"),
    (None, "imagenet21k", None, "plain"),
    (None, "none", None, "small-data"),            # from scratch
    (None, None, "vit_b16", "small-data"),
    (None, "auto", "vit_small", "small-data"),     # small presets have no checkpoint
    ("plain", "none", "vit_small", "plain"),       # an explicit recipe wins
    ("small-data", "auto", None, "small-data"),
])
def test_recipe_choice(recipe, weights, backbone, expected):
    assert choose_recipe(recipe, weights, backbone).name == expected


def test_unknown_recipe_is_an_error():
    with pytest.raises(ConfigError, match="unknown recipe 'tiny'; choose one of plain, small-data"):
        choose_recipe("tiny", "none", None)


def test_plain_recipe_keeps_the_original_defaults():
    options, backbone = resolve_options(PLAIN, {}, {})
    assert options == {
        "backbone": "vit_b16", "weights": "auto", "image_size": 224, "epochs": 10, "batch_size": 16,
        "learning_rate": 1e-4, "optimizer": "adam", "weight_decay": 0.05, "schedule": "constant",
        "warmup_epochs": 0, "label_smoothing": 0.0, "augment": True, "mixup": 0.0, "cutmix": 0.0,
        "patience": 5,
    }
    assert backbone == {}


def test_explicit_options_win_over_the_recipe():
    options, backbone = resolve_options(
        SMALL_DATA,
        {"epochs": 7, "learning_rate": None, "weights": "auto", "augment": False, "mixup": 0.5},
        {"tokenizer": "shifted", "drop_path": None, "num_layers": 3},
    )
    assert options["epochs"] == 7 and options["augment"] is False and options["mixup"] == 0.5
    assert options["learning_rate"] == SMALL_DATA.options["learning_rate"]   # None = not given
    assert options["weights"] == "none"                                      # "auto" = not given
    assert options["cutmix"] == SMALL_DATA.options["cutmix"]
    assert backbone == {"tokenizer": "shifted", "locality_attention": True,
                        "drop_path": SMALL_DATA.backbone_options["drop_path"], "num_layers": 3}
    options["augment"] = {}   # callers get copies; the recipe stays as it is
    assert resolve_options(SMALL_DATA, {}, {})[0]["augment"]["randaugment_ops"] == 2


def test_recipe_warmup_is_cut_for_short_runs_but_an_explicit_one_is_kept():
    assert resolve_options(SMALL_DATA, {"epochs": 100}, {})[0]["warmup_epochs"] == SMALL_DATA.options["warmup_epochs"]
    assert resolve_options(SMALL_DATA, {"epochs": 10}, {})[0]["warmup_epochs"] == 2
    assert resolve_options(SMALL_DATA, {"epochs": 10, "warmup_epochs": 4}, {})[0]["warmup_epochs"] == 4


def test_recipes_are_described_for_the_help():
    text = describe(SMALL_DATA)
    for key in (*SMALL_DATA.options, *SMALL_DATA.backbone_options):
        assert f"{key}=" in text
    assert set(RECIPES) == {"plain", "small-data"}


def test_cli_leaves_recipe_options_unset_unless_given():
    from vitkit.cli import build_parser

    args = build_parser().parse_args(["train", "x.csv", "--out", "m.weights.h5"])
    for key in ("recipe", "backbone", "image_size", "epochs", "batch_size", "learning_rate", "optimizer",
                "schedule", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "augment", "patience",
                "tokenizer", "locality_attention"):
        assert getattr(args, key) is None, key
    args = build_parser().parse_args([
        "train", "x.csv", "--out", "m.weights.h5", "--recipe", "small-data", "--no-augment",
        "--mixup", "0", "--tokenizer", "conv", "--no-locality-attention", "--epochs", "3",
    ])
    assert (args.recipe, args.augment, args.mixup, args.tokenizer, args.locality_attention, args.epochs) == \
        ("small-data", False, 0.0, "conv", False, 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "x.csv", "--out", "m.weights.h5", "--recipe", "fast"])


def test_train_help_lists_both_recipes(capsys):
    from vitkit.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "small-data:" in text and "plain:" in text and "tokenizer=conv" in text


# Mixup / CutMix ---------------------------------------------------------------------------


def _batch():
    images = np.stack([np.full((6, 8, 3), value, np.uint8) for value in (0, 100, 200, 250)])
    targets = np.eye(4, dtype=np.float32)
    return images, targets


def test_mixup_blends_pixels_and_labels_with_the_same_weight():
    images, targets = _batch()
    partner = np.array([1, 0, 3, 2])
    mixed, mixed_targets, kept = mixup(images, targets, partner, 0.3)
    assert kept == 0.3 and mixed.dtype == np.uint8
    np.testing.assert_array_equal(mixed[0], np.full((6, 8, 3), 70))            # 0.3*0 + 0.7*100
    np.testing.assert_array_equal(mixed[2], np.full((6, 8, 3), 235))           # 0.3*200 + 0.7*250
    np.testing.assert_allclose(mixed_targets[0], [0.3, 0.7, 0, 0])
    np.testing.assert_allclose(mixed_targets.sum(1), 1.0)


def test_cutmix_labels_follow_the_pasted_area():
    images, targets = _batch()
    partner = np.array([3, 2, 1, 0])
    rng = np.random.default_rng(0)
    for weight in (0.2, 0.5, 0.9):
        mixed, mixed_targets, kept = cutmix(images, targets, partner, weight, rng)
        pasted = (mixed[0, :, :, 0] == 250).mean()             # image 0 is all 0, its partner all 250
        assert kept == pytest.approx(1.0 - pasted)
        np.testing.assert_allclose(mixed_targets[0], [kept, 0, 0, 1 - kept], atol=1e-6)
        assert set(np.unique(mixed[1, :, :, 0])) <= {100, 200}  # pixels are copied, never blended
        np.testing.assert_allclose(mixed_targets.sum(1), 1.0, rtol=1e-6)


def test_mix_batch_mixes_sample_weights_and_respects_off():
    images, targets = _batch()
    weights = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    same = mix_batch(images, targets, weights, MixConfig(), np.random.default_rng(0))
    assert same[0] is images and same[1] is targets and same[2] is weights
    mixed, mixed_targets, mixed_weights = mix_batch(images, targets, weights, MixConfig(mixup=0.8),
                                                    np.random.default_rng(0))
    rng = np.random.default_rng(0)   # the same draws: apply?, Beta weight, partners
    rng.random()
    share = rng.beta(0.8, 0.8)
    partner = rng.permutation(4)
    np.testing.assert_allclose(mixed_weights, share * weights + (1 - share) * weights[partner], rtol=1e-5)
    np.testing.assert_allclose(mixed_targets, share * targets + (1 - share) * targets[partner], rtol=1e-5)
    with pytest.raises(ConfigError):
        MixConfig(mixup=-1.0)


def test_mixed_batches_are_a_function_of_seed_epoch_and_index(shape_arrays):
    from vitkit.data.batches import ImageBatches
    from vitkit.data.imageset import load_images

    images = load_images(shape_arrays, (32, 32))
    classes = sorted(set(images.labels))

    def batches():
        return MixedBatches(ImageBatches(images, 8, classes, shuffle=True, seed=1), MixConfig(0.8, 1.0), seed=1)

    first, second = batches(), batches()
    np.testing.assert_array_equal(first[2][0], second[2][0])
    first.on_epoch_end()
    second.set_epoch(1)
    np.testing.assert_array_equal(first[0][1], second[0][1])
    assert len(first) == len(images) // 8 + 1
    soft = np.concatenate([first[i][1] for i in range(len(first))])
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    assert (soft.max(1) < 1).any()    # some targets are mixed


# RandAugment ----------------------------------------------------------------------------------


def test_randaugment_changes_images_per_image_only_in_training():
    from vitkit.data.preprocessing import RandAugmentOps
    from vitkit.data.inputconfig import AugmentConfig

    images = np.random.default_rng(0).uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    layer = RandAugmentOps(num_ops=2, magnitude=0.5, seed=0)
    np.testing.assert_array_equal(np.asarray(layer(images, training=False)), images)
    out = np.asarray(layer(images, training=True))
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 255
    changed = np.abs(out - images).reshape(16, -1).max(1) > 0
    assert 0 < changed.sum() <= 16    # per-image draws: identity twice leaves some images alone
    assert AugmentConfig(flip=None, rotation=0, zoom=0, translation=0, brightness=0, contrast=0,
                         randaugment_ops=1).enabled
    assert AugmentConfig.off() == AugmentConfig.from_dict(AugmentConfig.off().to_dict())
    with pytest.raises(ConfigError):
        AugmentConfig(randaugment_magnitude=2.0)


# Training -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_small_data_recipe_trains_lowers_the_loss_and_is_stored(shape_arrays, tmp_path):
    import vitkit
    from vitkit.models.modelfile import read_metadata

    result = vitkit.train(shape_arrays, out=tmp_path / "m.weights.h5", weights="none", backbone=dict(TINY_BACKBONE),
                          epochs=6, batch_size=8, val_fraction=0.2, mixup=0.8, cutmix=1.0, verbose=0)
    assert result.recipe == "small-data"
    losses = [row["val_loss"] for row in result.history]  # training loss is noisy under Mixup/CutMix
    assert min(losses[-2:]) < losses[0], losses
    training = read_metadata(result.model_path)["training"]
    assert training["recipe"] == "small-data"
    assert (training["optimizer"], training["schedule"], training["label_smoothing"]) == ("adamw", "cosine", 0.1)
    assert (training["mixup"], training["cutmix"]) == (0.8, 1.0)      # explicit options win
    assert training["tokenizer"] == "conv" and training["locality_attention"] is True
    assert result.model.spec.backbone.tokenizer == "conv"
    assert result.model.spec.augment.randaugment_ops == 2
