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
This module needs no Keras.
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
from vitkit.models.pickles import holds_pickle, pickle_refusal

FORMATS = {
    "flax-npz": "Flax .npz checkpoint",
    "keras3-weights": "Keras 3 weights file",
    "keras3-model": "Keras 3 .keras model",
    "legacy-h5": "legacy (Keras 2 layout) HDF5 weights file",
}

# Heads of the published ViTs by width: every one of them uses 64-wide heads.
PUBLISHED_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"

# Flax name of each backbone array, found at the end of a name path.
_BLOCK_PATTERNS = (
    (re.compile(r"MultiHeadDotProductAttention_1/(query|key|value|out)/(kernel|bias)$"),
     "MultiHeadDotProductAttention_1/{0}/{1}"),
    (re.compile(r"(LayerNorm_[02])/(gamma|beta|scale|bias)$"), "{0}/{1}"),
    (re.compile(r"Dense_([01])/(kernel|bias)$"), "MlpBlock_3/Dense_{0}/{1}"),
)
_TOP_PATTERNS = (
    (re.compile(r"(?:^|[/_])encoder_norm/(gamma|beta|scale|bias)$"), "Transformer/encoder_norm/{0}"),
    (re.compile(r"posembed_input/pos_embedding$"), "Transformer/posembed_input/pos_embedding"),
    (re.compile(r"(?:^|/)(?:class_token/)?cls$"), "cls"),
    (re.compile(r"(?:^|/)embedding/(kernel|bias)$"), "embedding/{0}"),
    (re.compile(r"(?:^|/)pre_logits/(kernel|bias)$"), "pre_logits/{0}"),
    (re.compile(r"(?:^|/)head/(kernel|bias)$"), "head/{0}"),
)
_BLOCK = re.compile(r"encoderblock_(\d+)")
_KERAS_LEAVES = {"gamma": "scale", "beta": "bias"}

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


def flax_name_of(path: str) -> str | None:
    """The Flax checkpoint name of a backbone array given any tool's name for it, else None.

    Example:
        >>> flax_name_of("vit-b16/Transformer/encoderblock_0/Dense_1/kernel:0")
        'Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel'
    """
    path = path.split(":")[0]
    block = _BLOCK.search(path)
    if block:
        for pattern, template in _BLOCK_PATTERNS:
            found = pattern.search(path)
            if found:
                parts = [_KERAS_LEAVES.get(part, part) if part in ("gamma", "beta") else part
                         for part in found.groups()]
                return f"Transformer/encoderblock_{int(block.group(1))}/" + template.format(*parts)
        return None
    for pattern, template in _TOP_PATTERNS:
        found = pattern.search(path)
        if found:
            return template.format(*(_KERAS_LEAVES.get(part, part) for part in found.groups()))
    return None


@dataclasses.dataclass
class HeadLayer:
    """A BatchNormalization or Dense layer found outside the backbone (a classifier head).

    ``arrays`` holds ``gamma, beta, moving_mean, moving_variance`` or ``kernel, bias``;
    ``order`` sorts layers by their place in the file (recorded order, else Keras' numbering).
    """

    name: str
    kind: str
    arrays: dict[str, np.ndarray]
    order: tuple = ()

    @property
    def width_in(self) -> int:
        return int(self.arrays["kernel"].shape[0] if self.kind == "dense" else self.arrays["gamma"].shape[0])

    @property
    def width_out(self) -> int:
        return int(self.arrays["kernel"].shape[1] if self.kind == "dense" else self.arrays["gamma"].shape[0])


@dataclasses.dataclass
class ForeignWeights:
    """What a foreign weights file holds, by Flax name, plus what it tells of its model.

    Attributes:
        path: the file.
        format: a key of :data:`FORMATS`.
        backbone: Flax name -> array for the backbone (``embedding``, ``cls``, ``Transformer/...``,
            ``pre_logits``), in the file's own shapes.
        head: head layers outside the backbone, as found (:func:`chain_head` orders them),
            including a pretrained top (``head/kernel``) as a Dense layer named ``head``.
        num_heads: attention heads when the file tells them (Flax kernel shapes or a saved
            model configuration), else None.
        dropout: the dropout rate of a saved model configuration, else None.
    """

    path: Path
    format: str
    backbone: dict[str, np.ndarray]
    head: list[HeadLayer]
    num_heads: int | None = None
    dropout: float | None = None

    @property
    def description(self) -> str:
        return f"{self.path} ({FORMATS[self.format]})"


# Reading ----------------------------------------------------------------------------------------

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


# What the arrays say about the model -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BackboneShape:
    """Backbone dimensions read from the arrays (``num_heads`` None when they do not tell)."""

    patch_size: int
    num_layers: int
    hidden_size: int
    mlp_dim: int
    grid: int
    num_heads: int | None
    representation_size: int | None

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size

    @property
    def features(self) -> int:
        return self.representation_size or self.hidden_size


def backbone_shape(weights: ForeignWeights) -> BackboneShape:
    """Read patch size, depth, width, MLP width, grid and heads from the arrays; checks completeness."""
    arrays, source = weights.backbone, weights.description
    kernel = _need(arrays, "embedding/kernel", source)
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != 3:
        raise WeightsError(f"{source}: embedding/kernel has shape {kernel.shape}, not (patch, patch, 3, width)")
    patch, hidden = int(kernel.shape[0]), int(kernel.shape[3])
    blocks = sorted({int(m.group(1)) for key in arrays for m in [_BLOCK.search(key)] if m})
    if not blocks:
        raise WeightsError(f"{source} has no encoder blocks")
    if blocks != list(range(len(blocks))):
        missing = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        raise WeightsError(f"{source}: encoder block(s) {missing} are missing (found {blocks})")
    for name in _required_names(len(blocks)):
        _need(arrays, name, source)
    mlp = int(arrays["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[-1])
    tokens = int(arrays["Transformer/posembed_input/pos_embedding"].shape[1]) - 1
    grid = int(round(np.sqrt(tokens)))
    if grid * grid != tokens:
        raise WeightsError(f"{source}: the position embedding has {tokens} patch tokens, not a square grid")
    representation = arrays.get("pre_logits/kernel")
    return BackboneShape(
        patch, len(blocks), hidden, mlp, grid, weights.num_heads,
        None if representation is None else int(representation.shape[-1]),
    )


def _required_names(layers: int) -> list[str]:
    names = ["embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
             "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"]
    for i in range(layers):
        block = f"Transformer/encoderblock_{i}"
        names += [f"{block}/{norm}/{leaf}" for norm in ("LayerNorm_0", "LayerNorm_2") for leaf in ("scale", "bias")]
        names += [f"{block}/MultiHeadDotProductAttention_1/{part}/{leaf}"
                  for part in ("query", "key", "value", "out") for leaf in ("kernel", "bias")]
        names += [f"{block}/MlpBlock_3/Dense_{j}/{leaf}" for j in (0, 1) for leaf in ("kernel", "bias")]
    return names


def _need(arrays: dict[str, np.ndarray], name: str, source: str) -> np.ndarray:
    if name not in arrays:
        raise WeightsError(f"{source} has no {name!r}; it is not a complete ViT backbone")
    return arrays[name]


def chain_head(layers: list[HeadLayer], features: int, source: str) -> list[HeadLayer]:
    """Head layers in computation order, chained by shapes from the backbone's ``features`` width.

    At each width a BatchNormalization comes before the Dense that reads it (the recipe's
    ``BN -> Dense -> BN -> Dense``); ties are broken by the order the file records.
    """
    remaining = sorted(layers, key=lambda layer: layer.order)
    chain: list[HeadLayer] = []
    width = features
    while remaining:
        after_norm = bool(chain) and chain[-1].kind == "batchnorm"
        candidates = [layer for layer in remaining if layer.width_in == width
                      and not (after_norm and layer.kind == "batchnorm")]
        if not candidates:
            names = ", ".join(f"{layer.name} ({layer.kind}, input width {layer.width_in})" for layer in remaining)
            raise WeightsError(
                f"{source}: head layer(s) {names} do not follow the backbone's {features} features "
                f"or the layers before them"
            )
        chosen = next((layer for layer in candidates if layer.kind == "batchnorm"), candidates[0])
        chain.append(chosen)
        remaining.remove(chosen)
        width = chosen.width_out
    return chain
