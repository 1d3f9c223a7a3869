"""Sources of pretrained weights: AugReg ``.npz`` by name, ``hf-hub:`` through the Hugging Face
cache (never the network), local ``.safetensors``, refused pickles, and training from a timm
checkpoint through the command line."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import zipfile

import keras
import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

import vitkit
from badfiles import marker_pickle
from conftest import FIXTURES, TINY_BACKBONE, make_photo_tree, run_cli, run_commands, run_python
from vitkit.cli import main
from vitkit.errors import ConfigError, WeightsError
from vitkit.models.augreg import AUGREG
from vitkit.models.weights import weights_dirs

TIMM = FIXTURES / "timm"
CLASSES = [f"class_{i}" for i in range(5)]
AUGREG_NAME = "vit_tiny_patch16_224.augreg_in21k"
HUB_NAME = "timm/vit_small_patch14_reg4_dinov2.lvd142m"
# Any connection attempt goes to a closed local port, so a test that reached for the network fails.
NO_NETWORK = {"HF_HUB_OFFLINE": "1", "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "NO_PROXY": "", "TF_CPP_MIN_LOG_LEVEL": "3"}


def augreg_arrays(state: dict[str, np.ndarray], heads: int) -> dict[str, np.ndarray]:
    """A timm state dict in the Flax names and shapes of the AugReg (and 2020) ``.npz`` files,
    the inverse of what timm's ``_load_weights`` does with them."""
    width = state["cls_token"].shape[-1]
    arrays = {
        "cls": state["cls_token"], "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": state["patch_embed.proj.bias"], "Transformer/posembed_input/pos_embedding": state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"], "Transformer/encoder_norm/bias": state["norm.bias"],
        "head/kernel": state["head.weight"].T, "head/bias": state["head.bias"],
    }
    blocks = sorted({int(name.split(".")[1]) for name in state if name.startswith("blocks.")})
    for i in blocks:
        ours, theirs = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        attention = f"{ours}/MultiHeadDotProductAttention_1"
        for norm, timm_norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            arrays[f"{ours}/{norm}/scale"], arrays[f"{ours}/{norm}/bias"] = state[f"{theirs}.{timm_norm}.weight"], state[f"{theirs}.{timm_norm}.bias"]
        for j, part in enumerate(("query", "key", "value")):
            rows = slice(j * width, (j + 1) * width)
            arrays[f"{attention}/{part}/kernel"] = state[f"{theirs}.attn.qkv.weight"][rows].T.reshape(width, heads, -1)
            arrays[f"{attention}/{part}/bias"] = state[f"{theirs}.attn.qkv.bias"][rows].reshape(heads, -1)
        arrays[f"{attention}/out/kernel"] = state[f"{theirs}.attn.proj.weight"].T.reshape(heads, -1, width)
        arrays[f"{attention}/out/bias"] = state[f"{theirs}.attn.proj.bias"]
        for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            arrays[f"{ours}/MlpBlock_3/{dense}/kernel"] = state[f"{theirs}.mlp.{fc}.weight"].T
            arrays[f"{ours}/MlpBlock_3/{dense}/bias"] = state[f"{theirs}.mlp.{fc}.bias"]
    return arrays


def pooled_and_logits(model, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pooled = model.backbone.pool(model.backbone.encode(inputs))
    head = model.get_layer("head_output")
    return (keras.ops.convert_to_numpy(pooled),
            keras.ops.convert_to_numpy(keras.ops.matmul(pooled, head.kernel) + head.bias))


# AugReg ----------------------------------------------------------------------------------------------

def test_an_augreg_npz_loads_by_its_name_and_reproduces_timm(capsys):
    """The tiny AugReg-layout model (timm's vit_cls fixture in Flax names) in the cache under a
    registry name: its architecture comes from the file, its features and logits are timm's."""
    target = weights_dirs()[0] / AUGREG[AUGREG_NAME].file_name
    target.parent.mkdir(parents=True)
    np.savez(target, **augreg_arrays(load_file(TIMM / "vit_cls" / "model.safetensors"), heads=4))
    outputs = load_file(TIMM / "vit_cls.outputs.safetensors")

    model = vitkit.build_model(["a", "b"], weights=AUGREG_NAME, augment=False)
    assert model.spec.image_size == (32, 32) and model.spec.preprocess == "tf"
    pooled = keras.ops.convert_to_numpy(model.backbone(outputs["inputs"]))
    assert np.abs(pooled - outputs["pooled"]).max() < 1e-5
    with_top = vitkit.load_model(target, classes=CLASSES)
    _, logits = pooled_and_logits(with_top, outputs["inputs"])
    assert np.abs(logits - outputs["logits"]).max() < 1e-5

    assert main(["weights", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(AUGREG_NAME + " "))
    assert row.split()[-1] == str(target)


def test_an_augreg_checkpoint_that_cannot_be_downloaded_says_what_to_fetch_and_where(monkeypatch, capsys):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    checkpoint = AUGREG["vit_base_patch16_224.augreg_in21k_ft_in1k"]
    with pytest.raises(WeightsError) as caught:
        vitkit.build_model(["a", "b"], weights=checkpoint.name)
    message = str(caught.value)
    assert "\n" not in message and checkpoint.file_name in message
    assert "https://storage.googleapis.com/vit_models/augreg/" + checkpoint.file_name in message
    assert str(weights_dirs()[0] / checkpoint.file_name) in message and "VITKIT_HOME" in message
    assert main(["weights", "download", checkpoint.name]) == 2
    assert checkpoint.file_name in capsys.readouterr().err
    assert not weights_dirs()[0].exists() or not any(weights_dirs()[0].iterdir())


@pytest.mark.parametrize("backbone", [None, dict(TINY_BACKBONE)], ids=["from the file", "given"])
def test_an_npz_with_pre_logits_keeps_them_whichever_gives_the_backbone(backbone, tmp_path):
    arrays = augreg_arrays(load_file(TIMM / "vit_cls" / "model.safetensors"), heads=4)
    del arrays["head/kernel"], arrays["head/bias"]
    rng = np.random.default_rng(0)
    arrays["pre_logits/kernel"], arrays["pre_logits/bias"] = rng.normal(size=(32, 24)), rng.normal(size=24)
    np.savez(tmp_path / "represented.npz", **arrays)
    model = vitkit.build_model(["a", "b"], backbone=backbone, weights=str(tmp_path / "represented.npz"), augment=False)
    assert model.spec.backbone.representation_size == 24
    kernel = model.backbone.pre_logits.kernel
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), arrays["pre_logits/kernel"], rtol=1e-6)


def test_an_unknown_augreg_name_lists_the_known_ones():
    with pytest.raises(WeightsError, match="unknown AugReg checkpoint.*vit_base_patch16_224.augreg_in21k"):
        vitkit.build_model(["a", "b"], weights="vit_base_patch16_224.augreg_in42k")


# Hugging Face Hub -------------------------------------------------------------------------------------

def hub_cache(home, repo: str, family: str, revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """``HF_HOME`` holding ``repo`` as ``huggingface_hub`` lays out its cache."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((TIMM / family / name).read_bytes())
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snapshot


@pytest.mark.slow
def test_a_hub_checkpoint_comes_from_the_hugging_face_cache_offline(tmp_path):
    home = tmp_path / "hf"
    snapshot = hub_cache(home, HUB_NAME, "dinov2_reg")
    out = tmp_path / "dinov2.weights.h5"
    # Both commands in one new process: huggingface_hub reads HF_HOME when it is imported.
    results, stderr = run_commands([
        ["weights", "download", f"hf-hub:{HUB_NAME}"],
        ["weights", "convert", f"hf-hub:{HUB_NAME}", "--classes", ",".join(CLASSES), "--out", out],
    ], env={**NO_NETWORK, "HF_HOME": str(home)})
    assert [status for status, _ in results] == [0, 0], stderr
    assert str(snapshot / "model.safetensors") in results[0][1]
    model = vitkit.load_model(out)
    assert (model.spec.image_size, model.spec.preprocess, model.spec.interpolation) == ((42, 42), "normalize", "bicubic")
    assert model.spec.mean == (0.485, 0.456, 0.406) and model.spec.backbone.register_tokens == 4
    outputs = load_file(TIMM / "dinov2_reg.outputs.safetensors")
    pooled, logits = pooled_and_logits(model, outputs["inputs"])
    assert np.abs(pooled - outputs["pooled"]).max() < 1e-5 and np.abs(logits - outputs["logits"]).max() < 1e-5


@pytest.mark.slow
def test_a_hub_checkpoint_missing_offline_gives_one_line_that_says_what_to_fetch(tmp_path):
    home = tmp_path / "empty_hf"
    manifest = FIXTURES.parent.parent / "data_manifests" / "sample_products" / "train.csv"
    done = run_cli("train", str(manifest), "--weights", f"hf-hub:{HUB_NAME}", "--out", str(tmp_path / "m.weights.h5"),
                   env={**NO_NETWORK, "HF_HOME": str(home)})
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    print(f"offline message: {error}")
    assert error.startswith("vitkit: error: cannot get model.safetensors and config.json of hf-hub:" + HUB_NAME)
    assert f"https://huggingface.co/{HUB_NAME}/resolve/main/model.safetensors" in error
    assert str(home / "hub") in error and "HF_HOME" in error and "HF_HUB_OFFLINE=1" in error
    assert not (tmp_path / "m.weights.h5").exists()


def test_a_hub_repository_without_safetensors_or_config(monkeypatch):
    """No model.safetensors: refused with how to make one; no config.json: the shapes tell."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    def download(files):
        def fake(repo, filename, revision=None, force_download=False):
            if filename not in files:
                raise EntryNotFoundError(f"{repo} has no {filename}")
            return str(TIMM / "deit3" / filename)
        return fake

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download({"config.json"}))
    with pytest.raises(WeightsError, match="has no model.safetensors.*safetensors.torch.save_file"):
        vitkit.build_model(["a", "b"], weights="hf-hub:someone/deit3-pickles")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download({"model.safetensors"}))
    model = vitkit.build_model(["a", "b"], weights="hf-hub:someone/deit3-bare", num_heads=4, augment=False)
    assert (model.spec.backbone.no_embed_class, model.spec.backbone.layer_scale, model.spec.preprocess) == (True, 1e-5, "tf")
    with pytest.raises(WeightsError, match="write hf-hub:ORG/NAME"):
        vitkit.build_model(["a", "b"], weights="hf-hub:just-a-name")


# Local files and what is refused -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.pth", "pytorch_model.bin"])
@pytest.mark.parametrize("layout", ["zip", "raw"])
def test_pytorch_pickles_are_refused_with_how_to_convert(name, layout, tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / name
    if layout == "zip":  # what torch.save writes since PyTorch 1.6
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", marker_pickle(marker))
            archive.writestr("archive/version", "3\n")
    else:
        path.write_bytes(marker_pickle(marker))
    for load in (lambda: vitkit.build_model(["a", "b"], weights=str(path)),
                 lambda: vitkit.load_model(path, classes=["a", "b"])):
        with pytest.raises(WeightsError, match="is a Python pickle; vitkit never unpickles") as caught:
            load()
        assert "safetensors.torch.save_file" in str(caught.value) and "hf-hub:timm/" in str(caught.value)
    assert not marker.exists()


def test_weights_that_are_nothing_known_list_the_forms():
    with pytest.raises(WeightsError, match="an AugReg name or hf-hub:ORG/NAME"):
        vitkit.build_model(["a", "b"], weights="imagenet22k")


def test_a_checkpoint_sets_the_architecture():
    with pytest.raises(ConfigError, match="drop --backbone vit_s16"):
        vitkit.build_model(["a", "b"], backbone="vit_s16", weights=str(TIMM / "deit3"))
    with pytest.raises(ConfigError, match="has 4 attention heads, not 8; drop --heads"):
        vitkit.build_model(["a", "b"], weights=str(TIMM / "deit3"), num_heads=8)
    with pytest.raises(ConfigError, match="has patch size 8; drop the option that sets 16"):
        vitkit.build_model(["a", "b"], weights=str(TIMM / "deit3"), patch_size=16)
    with pytest.raises(ConfigError, match="--architecture applies only"):
        vitkit.train((np.zeros((4, 32, 32, 3), np.uint8), ["a", "b"] * 2), out="m.weights.h5",
                     backbone={**TINY_BACKBONE}, weights="none", architecture="deit3_base_patch16_224")


def test_a_checkpoint_file_and_its_folder_give_the_same_model():
    folder = vitkit.build_model(["a", "b"], weights=str(TIMM / "deit3"), augment=False, seed=0)
    file = vitkit.build_model(["a", "b"], weights=str(TIMM / "deit3" / "model.safetensors"), augment=False, seed=0)
    assert folder.spec == file.spec
    for a, b in zip(folder.backbone.weights, file.backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


# Training from a timm checkpoint ------------------------------------------------------------------------

@pytest.mark.slow
def test_train_explain_and_reload_from_a_timm_checkpoint(tmp_path, cli):
    """Trained and explained through the command line in this process, reloaded in a new one."""
    photos = make_photo_tree(tmp_path / "photos", per_class=6, size=48)
    out = tmp_path / "models" / "dinov2.weights.h5"
    status, _, stderr = cli("train", photos, "--weights", TIMM / "dinov2_reg" / "model.safetensors",
                            "--epochs", "2", "--batch-size", "6", "--val-fraction", "0.25", "--out", out)
    assert status == 0, stderr[-3000:]
    spec = vitkit.load_model(out).spec
    assert (spec.image_size, spec.preprocess, spec.interpolation, spec.backbone.register_tokens) == \
        ((42, 42), "normalize", "bicubic", 4)

    explained = tmp_path / "explained"
    status, _, stderr = cli("explain", out, photos, "--out", explained, "--method", "rollout",
                            "--report", tmp_path / "r.html")
    assert status == 0, stderr[-3000:]
    assert "left out: the class token and 4 register tokens" in (tmp_path / "r.html").read_text()
    table = pd.read_csv(explained / "explanations.csv").sort_values("image")

    code = (f"import json, vitkit\n"
            f"table = vitkit.predict({str(out)!r}, {str(photos)!r}).sort_values('image')\n"
            f"print('PREDICTIONS ' + table.to_json(orient='split', double_precision=15))")
    reloaded = run_python(code)
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    line = next(line for line in reloaded.stdout.splitlines() if line.startswith("PREDICTIONS "))
    payload = json.loads(line[len("PREDICTIONS "):])
    again = pd.DataFrame(payload["data"], columns=payload["columns"])
    columns = [f"p_{name}" for name in ("circle", "square", "triangle")]
    assert list(again["image"]) == list(table["image"])
    assert np.abs(again[columns].to_numpy() - table[columns].to_numpy()).max() < 1e-5
