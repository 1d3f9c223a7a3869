"""Where pretrained backbone weights come from (``--weights``), and what they tell of the model.

Besides ``none`` and the 2020 checkpoints of a backbone preset (``imagenet21k``,
``imagenet21k+imagenet2012``, see :mod:`vitkit.models.weights`), ``weights`` is one of:

``vit_base_patch16_224.augreg_in21k`` ...
    an AugReg checkpoint by its timm name (:mod:`vitkit.models.augreg`), downloaded into
    ``$VITKIT_HOME/weights`` like the 2020 ones;
``hf-hub:ORG/NAME`` (``@REVISION`` optional)
    a timm checkpoint on the Hugging Face Hub: its ``config.json`` and ``model.safetensors``,
    fetched with ``huggingface_hub.hf_hub_download``, so its cache (``HF_HOME``,
    ``HF_HUB_CACHE``), offline mode (``HF_HUB_OFFLINE=1``) and token (``HF_TOKEN``,
    ``hf auth login``) apply;
a ``.safetensors`` file
    in timm's tensor names, with the ``config.json`` beside it when there is one; or a folder
    holding both;
a ``.npz`` file
    a Flax checkpoint in the layout of the 2020 and AugReg ones;
a ``.backbone.weights.h5`` file
    a backbone pre-trained by ``vitkit pretrain`` (:mod:`vitkit.models.backbonefile`): it sets
    the whole architecture, the convolutional stem and locality attention included.

The architecture comes from ``config.json`` (see :mod:`vitkit.models.timmconfig`), else from a
timm name (``architecture=`` / ``--architecture``, or a file named after it), else from the
tensor shapes. PyTorch pickles (``.pth``, ``.bin``) are refused: nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np

from vitkit.errors import ConfigError, WeightsError
from vitkit.models.augreg import augreg_named
from vitkit.models.backbonefile import BACKBONE_FORMAT, backbone_file_values, read_backbone_file
from vitkit.models.config import ViTConfig
from vitkit.models.foreign import FORMATS, PUBLISHED_HEADS, backbone_shape
from vitkit.models.legacy import file_kind, read_weights
from vitkit.models.pickles import pickle_refusal
from vitkit.models.timmconfig import (
    INCEPTION_MEAN, INCEPTION_STD, ARCHITECTURES, TimmModel, from_architecture, from_hub_config, from_shapes,
)
from vitkit.models.timmlayout import backbone_values, head_values

HUB_PREFIX = "hf-hub:"
PRESET_WEIGHTS = ("imagenet21k", "imagenet21k+imagenet2012")
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


@dataclasses.dataclass
class Pretrained:
    """Pretrained weights and what they tell of the model they belong to.

    Attributes:
        label: the weights as given (a name, ``hf-hub:...`` or a path), for messages.
        path: the file the arrays are read from.
        format: ``timm`` (safetensors in timm's names), ``flax-npz`` or ``vitkit-backbone``
            (a file of ``vitkit pretrain``).
        config: the backbone (dimensions and options) of the checkpoint.
        image_size: the size its position embedding was made for.
        preprocess, mean, std, interpolation: how its training images were prepared.
        architecture: the timm architecture name, when known.
        fixed: whether the source fixes the architecture (every source but a local ``.npz``,
            which may go into any backbone preset of its shape).
        full_architecture: whether the source also fixes the tokenizer and attention (a
            pre-trained backbone file may hold the small-data recipe's), which the recipes'
            defaults then do not change.
    """

    label: str
    path: Path
    format: str
    config: ViTConfig
    image_size: tuple[int, int]
    preprocess: str = "tf"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str = "bilinear"
    architecture: str | None = None
    fixed: bool = True
    _read: Callable[[], dict] = dataclasses.field(default=dict, repr=False)
    full_architecture: bool = False

    @property
    def description(self) -> str:
        return self.label if str(self.path) == self.label else f"{self.label} ({self.path})"

    def backbone_values(self, backbone, image_size: tuple[int, int]) -> list[np.ndarray]:
        """Arrays for every variable of a built backbone at ``image_size``; nothing assigned."""
        from vitkit.models.weights import backbone_arrays

        grid = backbone.grid_shape(image_size)
        if self.format == "flax-npz":
            return backbone_arrays(self._read(), backbone.weights, grid, self.description)
        patch = self.config.patch_size
        old_grid = (self.image_size[0] // patch, self.image_size[1] // patch)
        if self.format == BACKBONE_FORMAT:
            return backbone_file_values(self._read(), backbone, grid, old_grid, self.description)
        return backbone_values(self._read(), backbone.config, backbone.weights, grid, old_grid, self.description)

    def head(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The checkpoint's classifier ``(kernel (D, classes), bias)``, or None."""
        if self.format == "timm":
            return head_values(self._read())
        if self.format == BACKBONE_FORMAT:
            return None
        arrays = self._read()
        if "head/kernel" not in arrays:
            return None
        return np.asarray(arrays["head/kernel"]), np.asarray(arrays["head/bias"])

    def preparation(self, preprocess: str | None = None, interpolation: str | None = None) -> dict:
        """``preprocess``, ``mean``, ``std`` and ``interpolation`` of a model spec: the ones given,
        else the checkpoint's."""
        preprocess = preprocess or self.preprocess
        normalized = preprocess == "normalize"
        return {"preprocess": preprocess, "mean": self.mean if normalized else None,
                "std": self.std if normalized else None, "interpolation": interpolation or self.interpolation}

    def load_into(self, backbone, image_size: tuple[int, int]) -> None:
        """Assign the backbone's variables, all or nothing."""
        values = self.backbone_values(backbone, image_size)
        for variable, value in zip(backbone.weights, values):
            variable.assign(value.astype(variable.dtype))


def weights_kind(weights: str | None) -> str:
    """``none``, ``preset`` (the 2020 checkpoints of a backbone preset, or ``auto``) or ``checkpoint``
    (a source that tells its own architecture), without reading anything."""
    if weights in (None, "none"):
        return "none"
    return "preset" if weights in (*PRESET_WEIGHTS, "auto") else "checkpoint"


def open_checkpoint(weights: str | None, architecture: str | None = None, num_heads: int | None = None) -> Pretrained | None:
    """The checkpoint ``weights`` names when it tells its own architecture (an AugReg name,
    ``hf-hub:``, a file or folder), opened (downloaded where needed); None for ``none``, ``auto``
    and the 2020 names, which go with a backbone preset."""
    if weights_kind(weights) != "checkpoint":
        if architecture is not None:
            raise ConfigError("--architecture applies only to timm checkpoints (--weights FILE.safetensors)")
        return None
    return pretrained_source(str(weights), architecture, num_heads)


def pretrained_source(weights: str, architecture: str | None = None, num_heads: int | None = None) -> Pretrained:
    """Find (downloading where needed) and open pretrained weights given in any form above.

    Args:
        weights: an AugReg name, ``hf-hub:ORG/NAME``, a ``.safetensors`` / ``.npz`` file or
            a folder, or a ``.backbone.weights.h5`` file of ``vitkit pretrain``.
        architecture: timm architecture name, for a ``.safetensors`` without ``config.json``.
        num_heads: attention heads, where neither a configuration nor the shapes tell them.

    Raises:
        WeightsError: not found, not downloadable (the message says what to fetch, from where
            and where to put it), a pickle, or not a checkpoint vitkit reads.
    """
    text = str(weights)
    if text.startswith(HUB_PREFIX):
        from vitkit.models.hub import hub_files

        config, model = hub_files(text[len(HUB_PREFIX):])
        return _timm(text, model, config, architecture, num_heads)
    augreg = augreg_named(text)
    if augreg is not None:
        from vitkit.models.weights import resolve_checkpoint_file

        path = resolve_checkpoint_file(augreg)
        return _flax(augreg.name, path, num_heads, augreg.architecture)
    path = Path(text).expanduser()
    if path.is_dir():
        model = path / "model.safetensors"
        if not model.is_file():
            raise WeightsError(f"folder {path} has no model.safetensors (a timm checkpoint: config.json and model.safetensors)")
        return _timm(text, model, path / "config.json", architecture, num_heads)
    if not path.exists():
        raise WeightsError(
            f"weights {text!r} not found: give none, imagenet21k, imagenet21k+imagenet2012, an AugReg name "
            f"or hf-hub:ORG/NAME (see `vitkit weights list`), a .safetensors / .npz file or folder, or a "
            f".backbone.weights.h5 file of `vitkit pretrain`"
        )
    kind = file_kind(path)
    if kind == "pickle" or path.suffix.lower() in _PICKLE_SUFFIXES:
        raise WeightsError(pickle_refusal(path))
    if path.suffix.lower() == ".safetensors":
        return _timm(text, path, path.with_name("config.json"), architecture, num_heads)
    if kind == "zip":
        return _flax(text, path, num_heads, None, fixed=False)
    if kind == "hdf5":
        return _backbone_file(text, path, num_heads)
    raise WeightsError(f"{path} is not a checkpoint vitkit reads (.safetensors in timm's names, a Flax .npz, "
                       f"or a .backbone.weights.h5 of `vitkit pretrain`)")


def is_timm_checkpoint(path) -> bool:
    """Whether ``path`` names a timm checkpoint: ``hf-hub:...``, a ``.safetensors`` file or a
    folder with ``config.json`` and ``model.safetensors``."""
    text = str(path)
    if text.startswith(HUB_PREFIX):
        return True
    path = Path(text)
    return path.suffix.lower() == ".safetensors" or (path.is_dir() and (path / "model.safetensors").is_file())


def _timm(label: str, path: Path, config_path: Path | None, architecture: str | None,
          num_heads: int | None) -> Pretrained:
    state = _SafetensorsFile(path)
    model = _timm_model(state, config_path, architecture, num_heads, path)
    config = model.config
    if num_heads is not None and num_heads != config.num_heads:
        raise ConfigError(f"{label} has {config.num_heads} attention heads, not {num_heads}; drop --heads")
    plain = (model.mean, model.std) == (INCEPTION_MEAN, INCEPTION_STD)
    return Pretrained(
        label, path, "timm", config, model.image_size, "tf" if plain else "normalize",
        None if plain else model.mean, None if plain else model.std, model.interpolation,
        model.architecture, True, state.arrays,
    )


def _timm_model(state: "_SafetensorsFile", config_path: Path | None, architecture: str | None,
                num_heads: int | None, path: Path) -> TimmModel:
    if config_path is not None and config_path.is_file():
        try:
            described = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise WeightsError(f"{config_path} is not a readable JSON configuration ({error})") from None
        model = from_hub_config(described, str(config_path))
        if architecture is not None and architecture.split(".")[0] != model.architecture:
            raise ConfigError(f"{config_path} describes {model.architecture}, not {architecture}; drop --architecture")
        return model
    stem = path.name.split(".")[0]
    named = architecture or (stem if stem in ARCHITECTURES else None)
    if named is not None:
        return from_architecture(named, str(path))
    return from_shapes(state.shapes(), num_heads, str(path))


def _flax(label: str, path: Path, num_heads: int | None, architecture: str | None, fixed: bool = True) -> Pretrained:
    weights = read_weights(path)
    if weights.format != "flax-npz":
        raise WeightsError(f"{path} is a {FORMATS[weights.format]}, not a pretrained checkpoint (.npz or .safetensors)")
    shape = backbone_shape(weights)
    heads = num_heads or shape.num_heads or PUBLISHED_HEADS.get(shape.hidden_size)
    if heads is None:
        raise ConfigError(f"{path}: its arrays do not tell the attention heads of width {shape.hidden_size}; pass --heads N")
    if num_heads is not None and shape.num_heads not in (None, num_heads):
        raise ConfigError(f"{path} has {shape.num_heads} attention heads, not {num_heads}; drop --heads")
    config = ViTConfig(shape.patch_size, shape.num_layers, shape.hidden_size, heads, shape.mlp_dim,
                       representation_size=shape.representation_size)
    arrays = {**weights.backbone, **{f"head/{key}": value for layer in weights.head for key, value in layer.arrays.items()}}
    return Pretrained(label, path, "flax-npz", config, (shape.image_size, shape.image_size),
                      architecture=architecture, fixed=fixed, _read=lambda: arrays)


def _backbone_file(label: str, path: Path, num_heads: int | None) -> Pretrained:
    opened = read_backbone_file(path)
    if num_heads is not None and num_heads != opened.config.num_heads:
        raise ConfigError(f"{label} has {opened.config.num_heads} attention heads, not {num_heads}; drop --heads")
    return Pretrained(label, path, BACKBONE_FORMAT, opened.config, opened.image_size, opened.preprocess,
                      interpolation=opened.interpolation, _read=opened.arrays, full_architecture=True)


class _SafetensorsFile:
    """A ``.safetensors`` file read with ``safetensors.numpy``: shapes first, arrays when needed."""

    def __init__(self, path: Path):
        self.path = path
        self._arrays: dict[str, np.ndarray] | None = None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="numpy") as handle:
                return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise WeightsError(f"{self.path} is not a readable .safetensors file ({error})") from None

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            from safetensors.numpy import load_file

            try:
                loaded = load_file(str(self.path))
            except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
                raise WeightsError(
                    f"{self.path} cannot be read with NumPy ({error}); it must be a .safetensors file of "
                    f"float32 or float16 tensors"
                ) from None
            self._arrays = {name: np.asarray(value, dtype=np.float32) for name, value in loaded.items()}
        return self._arrays
