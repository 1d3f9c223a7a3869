"""Weights files made by other tools, read by name into one neutral form.

Three families of files are understood, whatever wrote them:

- Flax ``.npz`` checkpoints of the original ViT (``ViT-B_16.npz`` ...), with their
  ImageNet classification top (``head/kernel``) and, for ImageNet-21k, ``pre_logits``;
- Keras 3 weights (``model.save_weights("x.weights.h5")``, or a whole ``.keras`` model) of a
  vit-keras backbone, alone or inside the original recipe's ``Sequential`` head;
- HDF5 in the legacy layout (``layer_names`` / ``weight_names``) written by Keras 2
  (``save_weights("x.h5")`` or ``model.save("x.h5")``, e.g. the original recipe under
  TensorFlow 2.15 and vit-keras 0.1.2) or by Keras 3's legacy ``model.save("x.h5")``.

Every array is placed by its name, turned into the Flax checkpoint's name (the names vitkit's
backbone maps from), never by the order of layers. Head layers outside the backbone
(BatchNorm / Dense) are chained by their shapes. Nothing is ever unpickled: ``.npz`` files are
opened with ``allow_pickle=False`` and a saved model's configuration is only parsed as JSON.
The neutral form and the names are in :mod:`vitkit.models.foreign`. This module needs no Keras.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from vitkit.errors import WeightsError
from vitkit.models.foreign import ForeignWeights, HeadLayer, flax_name_of
from vitkit.models.pickles import holds_pickle, pickle_refusal

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"

# Keras 3 files written before layer names were stored address layers by attribute name;
# these are vit-keras' attribute names.
_ATTRIBUTE_NAMES = {
    "att": "MultiHeadDotProductAttention_1",
    "query_dense": "query",
    "key_dense": "key",
    "value_dense": "value",
    "combine_heads": "out",
    "layernorm1": "LayerNorm_0",
    "layernorm2": "LayerNorm_2",
    "conv2d": "embedding",
    "add_position_embs": "posembed_input",
    "layer_normalization": "encoder_norm",
}
_TRANSFORMER_BLOCK = re.compile(r"^transformer_block(?:_(\d+))?$")


def file_kind(path: str | Path) -> str:
    """``hdf5``, ``zip``, ``pickle`` or ``unknown``, from the first bytes of a file (a PyTorch
    ``.pth`` / ``.bin`` zip archive, which holds a ``data.pkl``, is a ``pickle``)."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            start = stream.read(8)
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} not found") from None
    except OSError as error:
        raise WeightsError(f"cannot read {path} ({error.strerror or error})") from None
    if start.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if start.startswith(_ZIP_SIGNATURE):
        return "pickle" if holds_pickle(path) else "zip"
    if start[:1] == b"\x80" and start[1:2] in {bytes([n]) for n in range(2, 6)}:
        return "pickle"
    return "unknown"


def read_weights(path: str | Path) -> ForeignWeights:
    """Read a Flax ``.npz``, Keras 3 ``.weights.h5`` / ``.keras`` or legacy ``.h5`` file.

    Raises:
        WeightsError: the file is missing, not a weights file (a pickle, text, an image ...),
            or holds arrays vitkit cannot place; the message names the file and what is wrong.
    """
    path = Path(path)
    kind = file_kind(path)
    if kind == "pickle":
        raise WeightsError(pickle_refusal(path))
    if kind == "unknown":
        raise WeightsError(
            f"{path} is not a weights file (neither HDF5 .h5 / .weights.h5 nor a .npz checkpoint)"
        )
    if kind == "zip":
        return _read_zip(path)
    try:
        with h5py.File(path, "r") as handle:
            return _from_hdf5(path, handle, None, None)
    except OSError as error:
        raise WeightsError(f"{path} is not a readable HDF5 file ({error})") from None


def _read_zip(path: Path) -> ForeignWeights:
    """A ``.keras`` model (its ``model.weights.h5`` and ``config.json``) or a ``.npz`` checkpoint."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "model.weights.h5" in names:
                config = json.loads(archive.read("config.json")) if "config.json" in names else None
                with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as handle:
                    return _from_hdf5(path, handle, "keras3-model", config)
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as error:
        raise WeightsError(f"{path} is a damaged archive ({error})") from None
    return _read_npz(path)


def _read_npz(path: Path) -> ForeignWeights:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise WeightsError(f"{path} is not a readable .npz checkpoint ({error})") from None
    with archive:
        arrays = {}
        for key in archive.files:
            try:
                arrays[key] = np.asarray(archive[key])
            except ValueError as error:
                raise WeightsError(f"{path}: array {key!r} cannot be read safely ({error})") from None
    unknown = sorted(key for key in arrays if flax_name_of(key) is None)
    if unknown:
        raise WeightsError(f"{path}: arrays {unknown[:5]} are not part of a ViT checkpoint")
    if not arrays:
        raise WeightsError(f"{path} holds no arrays")
    backbone = {flax_name_of(key): value for key, value in arrays.items()}
    head = _take_top(backbone, path)
    query = backbone.get("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel")
    heads = int(query.shape[1]) if query is not None and query.ndim == 3 else None
    return ForeignWeights(path, "flax-npz", backbone, head, num_heads=heads)


def _take_top(backbone: dict[str, np.ndarray], path: Path) -> list[HeadLayer]:
    """Remove a classification top (``head/kernel``, ``head/bias``) from ``backbone``, as a Dense layer."""
    top = [backbone.pop(key) for key in ("head/kernel", "head/bias") if key in backbone]
    if len(top) == 1:
        raise WeightsError(f"{path} has only one of head/kernel and head/bias")
    return [_dense("head", *top)] if top else []


def _dense(name: str, kernel: np.ndarray, bias: np.ndarray) -> HeadLayer:
    """A classification top: after every other head layer."""
    return HeadLayer(name, "dense", {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}, (float("inf"), "", 0))


def _from_hdf5(path: Path, handle: h5py.File, format: str | None, config: dict | None) -> ForeignWeights:
    legacy_root = _legacy_root(handle)
    if legacy_root is not None:
        layers = list(_legacy_layers(legacy_root))
        format = "legacy-h5"
        config = config or _json_attr(handle, "model_config")
    elif "layers" in handle or "vars" in handle:
        layers = list(_keras3_layers(handle))
        format = format or "keras3-weights"
    else:
        raise WeightsError(
            f"{path} is an HDF5 file but not a Keras weights file (no layer_names, no layers/ group)"
        )
    return _assemble(path, format, layers, config)


def _legacy_root(handle: h5py.File) -> h5py.Group | None:
    for group in (handle, handle.get("model_weights")):
        if isinstance(group, h5py.Group) and "layer_names" in group.attrs:
            return group
    return None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _json_attr(handle: h5py.File, name: str) -> dict | None:
    raw = handle.attrs.get(name)
    if raw is None:
        return None
    try:
        return json.loads(_text(raw))
    except json.JSONDecodeError:
        return None


@dataclasses.dataclass
class _Layer:
    """A layer's arrays with the name path of each: ``[(name_path, leaf, array), ...]``."""

    name: str
    arrays: list[tuple[str, str, np.ndarray]]
    order: tuple


def _legacy_layers(root: h5py.Group) -> Iterator[_Layer]:
    """Layers of the legacy layout: ``layer_names`` -> groups whose ``weight_names`` name every array."""
    for position, layer_name in enumerate(_text(n) for n in root.attrs["layer_names"]):
        group = root.get(layer_name)
        if group is None:
            continue
        arrays = []
        for weight_name in (_text(n) for n in group.attrs.get("weight_names", [])):
            dataset = group.get(weight_name)
            if not isinstance(dataset, h5py.Dataset):
                raise WeightsError(f"{root.file.filename} lists {layer_name}/{weight_name} but holds no such array; "
                                   f"the file is damaged")
            name_path = weight_name.split(":")[0]
            arrays.append((f"{layer_name}/{name_path}", name_path.rsplit("/", 1)[-1], dataset[()]))
        yield _Layer(layer_name, arrays, (position, "", 0))


def _keras3_layers(handle: h5py.File) -> Iterator[_Layer]:
    """Layers of the Keras 3 layout: every ``.../vars`` group, named by the layer names stored beside it.

    Files from Keras versions that did not store names fall back to the attribute names
    (vit-keras' ``transformer_block_1/att/query_dense`` ...).
    """
    groups: list[tuple[str, h5py.Group]] = []
    handle.visititems(lambda key, item: groups.append((key, item))
                      if isinstance(item, h5py.Group) and key.rsplit("/", 1)[-1] == "vars" else None)
    for key, variables in groups:
        if key.split("/", 1)[0] == "optimizer" or not len(variables):
            continue
        parts = key.split("/")[:-1]
        names = []
        for depth in range(1, len(parts) + 1):
            if parts[depth - 1] == "layers":
                continue
            layer_vars = handle.get("/".join(parts[:depth] + ["vars"]))
            stored = layer_vars.attrs.get("name") if layer_vars is not None else None
            names.append(_text(stored) if stored is not None else _attribute_name(parts, depth))
        values = [variables[str(i)][()] for i in range(len(variables))]
        layer = "/".join(names)
        leaves = _keras_leaves(layer, values)
        yield _Layer(layer, [(f"{layer}/{leaf}", leaf, value) for leaf, value in zip(leaves, values)],
                     (0, *_natural_key(names[-1] if names else "")))


def _attribute_name(parts: list[str], depth: int) -> str:
    name = parts[depth - 1]
    block = _TRANSFORMER_BLOCK.match(name)
    if block:
        return f"encoderblock_{int(block.group(1) or 0)}"
    if depth >= 3 and parts[depth - 3] == "mlpblock" and name in ("dense", "dense_1"):
        return "Dense_0" if name == "dense" else "Dense_1"
    return _ATTRIBUTE_NAMES.get(name, name)


def _keras_leaves(layer: str, values: list[np.ndarray]) -> list[str]:
    """Variable names of a Keras 3 layer from its kind (its name, else its variables' shapes)."""
    shapes = [value.shape for value in values]
    last = layer.rsplit("/", 1)[-1]
    if len(values) == 1 and "class_token" in last:
        return ["cls"]
    if len(values) == 1 and "posembed_input" in last:
        return ["pos_embedding"]
    if len(values) == 4 and all(len(shape) == 1 for shape in shapes):
        return ["gamma", "beta", "moving_mean", "moving_variance"]
    if len(values) == 2 and len(shapes[1]) == 1:
        return ["gamma", "beta"] if len(shapes[0]) == 1 else ["kernel", "bias"]
    return [f"variable_{i}" for i in range(len(values))]


def _natural_key(name: str) -> tuple:
    """``dense`` < ``dense_1`` < ``dense_10``: Keras numbers auto-named layers in creation order."""
    found = re.match(r"^(.*?)(?:_(\d+))?$", name)
    return (found.group(1), int(found.group(2) or 0))


def _assemble(path: Path, format: str, layers: list[_Layer], config: dict | None) -> ForeignWeights:
    backbone: dict[str, np.ndarray] = {}
    head: list[HeadLayer] = []
    for layer in layers:
        rest = []
        for name_path, leaf, value in layer.arrays:
            name = flax_name_of(name_path)
            if name is None:
                rest.append((leaf, value))
            elif name in backbone:
                raise WeightsError(f"{path} holds {name} twice (in {layer.name}); it has more than one ViT")
            else:
                backbone[name] = value
        if rest:
            head.append(_head_layer(path, layer, dict(rest)))
    if not backbone:
        raise WeightsError(f"{path} holds no ViT weights (no embedding, class token or encoder blocks)")
    head += _take_top(backbone, path)
    return ForeignWeights(path, format, backbone, head, _config_value(config, "num_heads", int),
                          _config_value(config, "dropout", float))


def _head_layer(path: Path, layer: _Layer, arrays: dict[str, np.ndarray]) -> HeadLayer:
    if set(arrays) == {"gamma", "beta", "moving_mean", "moving_variance"}:
        return HeadLayer(layer.name, "batchnorm", arrays, layer.order)
    if set(arrays) == {"kernel", "bias"} and arrays["kernel"].ndim == 2:
        return HeadLayer(layer.name, "dense", arrays, layer.order)
    raise WeightsError(
        f"{path}: layer {layer.name!r} ({', '.join(sorted(arrays))}) is neither part of a ViT "
        f"backbone nor a BatchNormalization / Dense head layer; vitkit cannot place it"
    )


def _config_value(config: Any, key: str, kind: type) -> Any:
    """The one value of ``key`` among the transformer blocks of a saved model configuration."""
    found = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name", "").endswith("TransformerBlock") and key in node.get("config", {}):
                found.add(kind(node["config"][key]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found.pop() if len(found) == 1 else None


