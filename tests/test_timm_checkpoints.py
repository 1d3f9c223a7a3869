"""timm checkpoints against timm itself: the fixtures of tests/fixtures/timm (tiny models of the
AugReg/2020, DeiT III, DINOv2-with-registers and mean-pooling families, with timm's outputs),
and the tensor names and shapes of the full-size architectures."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

import vitkit
from conftest import FIXTURES, run_python
from vitkit.errors import ConfigError, WeightsError
from vitkit.models.backbone import VisionTransformer
from vitkit.models.posembed import _bicubic_antialiased, resample_position_embedding
from vitkit.models.timmconfig import from_hub_config, from_shapes
from vitkit.models.timmlayout import HEAD_NAMES, backbone_values, name_map

TIMM = FIXTURES / "timm"
FAMILIES = ("vit_cls", "deit3", "dinov2_reg", "meanpool")
CLASSES = [f"class_{i}" for i in range(5)]
TOLERANCE = 1e-5

# Runs on any backend: the largest difference of vitkit's tokens, pooled features and logits to
# timm's, per family and input size.
ORACLE = """
import numpy as np
from keras import ops
from safetensors.numpy import load_file
import vitkit

def differences(folder, outputs, suffix):
    x = outputs["inputs" + suffix]
    model = vitkit.load_model(folder, classes=[f"class_{i}" for i in range(5)], image_size=x.shape[1])
    backbone, head = model.backbone, model.get_layer("head_output")
    tokens = backbone.encode(ops.convert_to_tensor(x))
    pooled = backbone.pool(tokens)
    logits = ops.matmul(pooled, head.kernel) + head.bias
    found = {"tokens": tokens, "pooled": pooled, "logits": logits}
    return {key: float(np.abs(ops.convert_to_numpy(value) - outputs[key + suffix]).max()) for key, value in found.items()}

def oracle(root):
    result = {}
    for family in FAMILIES:
        outputs = load_file(f"{root}/{family}.outputs.safetensors")
        for suffix in ("", "_resized"):
            result[family + suffix] = differences(f"{root}/{family}", outputs, suffix)
    return result
""".replace("FAMILIES", repr(FAMILIES))


def oracle_differences(backend: str | None) -> dict[str, dict[str, float]]:
    """The oracle on ``backend`` in a new process (None: in this process)."""
    if backend is None:
        namespace: dict = {}
        exec(compile(ORACLE, "oracle", "exec"), namespace)
        return namespace["oracle"](str(TIMM))
    done = run_python(ORACLE + f"\nimport json\nprint('ORACLE ' + json.dumps(oracle({str(TIMM)!r})))", backend=backend)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("ORACLE "))
    return json.loads(line[len("ORACLE "):])


def _report(backend: str, differences: dict[str, dict[str, float]]) -> None:
    for case, found in differences.items():
        print(f"timm oracle {backend} {case}: " + ", ".join(f"{k} {v:.1e}" for k, v in found.items()))
    worst = {case: max(found.values()) for case, found in differences.items()}
    assert max(worst.values()) < TOLERANCE, worst
    assert set(differences) == {family + suffix for family in FAMILIES for suffix in ("", "_resized")}


def test_every_family_reproduces_timm_on_tensorflow():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the in-process oracle runs on TensorFlow; JAX has its own test")
    _report("tensorflow", oracle_differences(None))


@pytest.mark.slow
def test_every_family_reproduces_timm_on_jax():
    _report("jax", oracle_differences("jax"))


def test_timm_resampling_is_not_the_bilinear_of_the_2020_checkpoints():
    """The *_resized outputs pin the resampling: the JAX/vit-keras bilinear one misses them."""
    state = load_file(TIMM / "vit_cls" / "model.safetensors")
    outputs = load_file(TIMM / "vit_cls.outputs.safetensors")
    config = from_hub_config(json.loads((TIMM / "vit_cls" / "config.json").read_text()), "vit_cls").config
    backbone = VisionTransformer(**config.to_dict(), name="vit")
    backbone.build((None, 48, 48, 3))
    values = backbone_values(state, config, backbone.weights, (6, 6), (4, 4), "vit_cls")
    position = [v.path for v in backbone.weights].index("vit/posembed_input/pos_embedding")
    values[position] = resample_position_embedding(state["pos_embed"], (6, 6), 1, "bilinear")
    for variable, value in zip(backbone.weights, values):
        variable.assign(value)
    tokens = keras.ops.convert_to_numpy(backbone.encode(outputs["inputs_resized"]))
    assert np.abs(tokens - outputs["tokens_resized"]).max() > 1e-3


@pytest.mark.parametrize("source, target", [(4, 6), (6, 4), (7, 3), (5, 5), (3, 8)])
def test_bicubic_resampling_is_pillows_antialiased_bicubic(source, target):
    """PyTorch's antialiased bicubic is Pillow's; Pillow is the independent reference here, for
    shrinking (where the kernel widens) as well as enlarging."""
    table = np.random.default_rng(source * 10 + target).normal(size=(source, source)).astype(np.float32)
    expected = np.asarray(Image.fromarray(table, mode="F").resize((target, target), Image.Resampling.BICUBIC))
    matrix = _bicubic_antialiased(source, target)
    np.testing.assert_allclose(matrix @ table @ matrix.T, expected, atol=1e-5)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)


def test_position_embedding_keeps_prefix_tokens_and_grid():
    embedding = np.random.default_rng(0).normal(size=(1, 5 + 9, 4)).astype(np.float32)
    resized = resample_position_embedding(embedding, (4, 4), 5, "bicubic")
    assert resized.shape == (1, 5 + 16, 4)
    np.testing.assert_array_equal(resized[:, :5], embedding[:, :5])
    assert resample_position_embedding(embedding, (3, 3), 5, "bicubic") is embedding


# The full-size architectures ----------------------------------------------------------------------

ARCHITECTURES = json.loads((TIMM / "architectures.json").read_text())


def _zeros(shape) -> np.ndarray:
    """A read-only array of ``shape`` that takes no memory (every element is the same zero)."""
    return np.broadcast_to(np.zeros((), np.float32), tuple(shape))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_tensor_of_the_full_architectures_has_its_place(name):
    listing = ARCHITECTURES[name]
    cfg = listing["pretrained_cfg"]
    model = from_hub_config({"architecture": name, "pretrained_cfg": cfg,
                             "num_classes": cfg["num_classes"]}, name)
    assert model.image_size == tuple(cfg["input_size"][1:])
    assert (model.mean, model.std, model.interpolation) == (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"])
    backbone = VisionTransformer(**model.config.to_dict(), name="vit")
    backbone.build((None, *model.image_size, 3))
    tensors = listing["tensors"]
    grid = backbone.grid_shape(model.image_size)
    values = backbone_values({k: _zeros(s) for k, s in tensors.items()}, model.config, backbone.weights, grid, grid, name)
    assert [tuple(v.shape) for v in values] == [tuple(v.shape) for v in backbone.weights]
    used = {timm_name for timm_name, _ in name_map(model.config).values()}
    head = {n for n in HEAD_NAMES if n in tensors}
    assert used | head == set(tensors), "a tensor of the checkpoint has no place, or a mapped one is not there"
    assert len(name_map(model.config)) == len(backbone.weights)
    assert bool(head) == (cfg["num_classes"] > 0) and model.num_classes == cfg["num_classes"]
    if head:
        assert tensors["head.weight"] == [cfg["num_classes"], model.config.hidden_size]
    del backbone


def test_the_dinov2_architecture_has_registers_layer_scale_and_patch_14():
    config = from_hub_config({"architecture": "vit_small_patch14_reg4_dinov2"}, "dinov2").config
    assert (config.patch_size, config.register_tokens, config.no_embed_class, config.layer_scale) == (14, 4, True, 1e-5)
    assert (config.hidden_size, config.num_layers, config.num_heads, config.mlp_dim) == (384, 12, 6, 1536)


# Configurations as timm writes them -------------------------------------------------------------

def test_model_args_override_the_architecture_and_give_the_checkpoint_size():
    described = json.loads((TIMM / "dinov2_reg" / "config.json").read_text())
    model = from_hub_config(described, "dinov2_reg")
    assert model.image_size == (42, 42), "model_args img_size, not pretrained_cfg's 518"
    assert model.config.patch_size == 14 and model.config.hidden_size == 32 and model.config.register_tokens == 4
    assert model.num_classes == 5
    meanpool = from_hub_config(json.loads((TIMM / "meanpool" / "config.json").read_text()), "meanpool")
    assert (meanpool.config.pooling, meanpool.config.fc_norm) == ("mean", True)


@pytest.mark.parametrize("change, message", [
    ({"architecture": "vit_huge_patch14_clip_224"}, "not one vitkit builds"),
    ({"model_args": {"qk_norm": True}}, "qk_norm=True is not supported"),
    ({"model_args": {"global_pool": "map"}}, "global_pool='map'"),
    ({"model_args": {"act_layer": "gelu_tanh"}}, r"\['act_layer'\]"),
    ({"pretrained_cfg": {"interpolation": "lanczos"}}, "lanczos"),
])
def test_configurations_vitkit_cannot_build_are_refused(change, message):
    described = {**json.loads((TIMM / "vit_cls" / "config.json").read_text()), **change}
    with pytest.raises((ConfigError, WeightsError), match=message):
        from_hub_config(described, "config.json")


def test_shapes_alone_give_the_architecture_and_the_heads_come_from_the_user(tmp_path):
    """A .safetensors without config.json: everything but the heads (32 wide: not 64-wide heads)
    comes from the shapes; with --heads it reproduces timm."""
    path = tmp_path / "weights.safetensors"
    shutil.copy(TIMM / "dinov2_reg" / "model.safetensors", path)
    with pytest.raises(ConfigError, match="--heads N"):
        vitkit.build_model(CLASSES, weights=str(path))
    model = vitkit.load_model(path, classes=CLASSES, num_heads=4)
    config = model.spec.backbone
    assert (config.patch_size, config.register_tokens, config.no_embed_class, model.spec.image_size) == (14, 4, True, (42, 42))
    assert model.spec.preprocess == "tf", "no architecture has that shape: timm's ViT default, mean and std 0.5"
    outputs = load_file(TIMM / "dinov2_reg.outputs.safetensors")
    pooled = model.backbone.pool(model.backbone.encode(outputs["inputs"]))
    assert np.abs(keras.ops.convert_to_numpy(pooled) - outputs["pooled"]).max() < TOLERANCE


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_shapes_of_the_full_architectures_tell_what_their_configuration_says(name):
    listing = ARCHITECTURES[name]
    described = from_hub_config({"architecture": name, "pretrained_cfg": listing["pretrained_cfg"]}, name)
    found = from_shapes({k: tuple(v) for k, v in listing["tensors"].items()}, None, name)
    keys = ("patch_size", "num_layers", "hidden_size", "num_heads", "mlp_dim", "register_tokens", "no_embed_class",
            "pooling", "fc_norm")
    assert {k: getattr(found.config, k) for k in keys} == {k: getattr(described.config, k) for k in keys}
    assert (found.config.layer_scale is None) == (described.config.layer_scale is None)
    assert (found.image_size, found.mean, found.std) == (described.image_size, described.mean, described.std)


def test_a_named_architecture_that_does_not_fit_the_tensors_is_refused(tmp_path):
    path = tmp_path / "vit_small_patch14_reg4_dinov2.lvd142m.safetensors"
    shutil.copy(TIMM / "dinov2_reg" / "model.safetensors", path)
    with pytest.raises(WeightsError, match="patch_embed.proj.weight gives shape"):
        vitkit.build_model(CLASSES, weights=str(path), image_size=42)
    with pytest.raises(ConfigError, match="describes vit_base_patch16_224, not deit3"):
        vitkit.build_model(CLASSES, weights=str(TIMM / "vit_cls"), architecture="deit3_base_patch16_224")
