"""Pretrained ViT checkpoints: where they come from, where they are cached, how they map by name.

Checkpoints are the original Flax ``.npz`` files (the ones vit-keras reads), named
``ViT-{B,L}_{16,32}_{imagenet21k,imagenet21k+imagenet2012}.npz``, and the AugReg ones
(:mod:`vitkit.models.augreg`, downloaded the same way). They are looked for in
``$VITKIT_HOME/weights`` (default ``~/.keras/vitkit/weights``) and in vit-keras' own cache
``~/.keras/weights``, then downloaded. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from vitkit.models.config import ViTConfig
from vitkit.models.posembed import resample_position_embedding
from vitkit.errors import WeightsError
from vitkit.fileio import atomic_output, vitkit_home
from vitkit.progress import Progress

WEIGHT_NAMES = ("imagenet21k", "imagenet21k+imagenet2012")

_SIZES = {  # checkpoint size name -> (preset, patch, layers, hidden)
    "B_16": ("vit_b16", 16, 12, 768),
    "B_32": ("vit_b32", 32, 12, 768),
    "L_16": ("vit_l16", 16, 24, 1024),
    "L_32": ("vit_l32", 32, 24, 1024),
}
_SOURCES = (
    "https://storage.googleapis.com/vit_models/{weights_url}/ViT-{size}.npz",
    "https://github.com/faustomorales/vit-keras/releases/download/dl/ViT-{size}_{weights_url}.npz",
)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint: its file name, download addresses and what it contains."""

    size: str
    weights: str
    urls: tuple[str, ...]

    @property
    def file_name(self) -> str:
        return f"ViT-{self.size}_{self.weights}.npz"

    @property
    def backbone(self) -> str:
        return _SIZES[self.size][0]

    @property
    def has_representation(self) -> bool:
        """ImageNet-21k checkpoints carry a ``pre_logits`` tanh layer of the hidden width."""
        return self.weights == "imagenet21k"


CHECKPOINTS: dict[str, Checkpoint] = {}
for _size in _SIZES:
    for _weights in WEIGHT_NAMES:
        _quoted = _weights.replace("+", "%2B")
        _checkpoint = Checkpoint(
            _size, _weights, tuple(url.format(size=_size, weights_url=_quoted) for url in _SOURCES)
        )
        CHECKPOINTS[_checkpoint.file_name] = _checkpoint


def weights_dirs() -> list[Path]:
    """Folders searched for checkpoints, first is where downloads go."""
    return [vitkit_home() / "weights", Path.home() / ".keras" / "weights"]


def checkpoint_named(name: str) -> Checkpoint:
    """A published checkpoint by name: ``ViT-B_16_imagenet21k`` (``.npz`` optional, any case)."""
    wanted = name.strip().lower().removesuffix(".npz")
    for file_name, checkpoint in CHECKPOINTS.items():
        if file_name.lower().removesuffix(".npz") == wanted:
            return checkpoint
    raise WeightsError(
        f"unknown checkpoint {name!r}; known: {', '.join(n.removesuffix('.npz') for n in CHECKPOINTS)} "
        f"(see `vitkit weights list`)"
    )


def cached_checkpoint(checkpoint: Checkpoint) -> Path | None:
    """Where a checkpoint is cached (first of :func:`weights_dirs` that has it), or None."""
    for folder in weights_dirs():
        candidate = folder / checkpoint.file_name
        if candidate.is_file():
            return candidate
    return None


def find_checkpoint(weights: str, config: ViTConfig) -> Checkpoint:
    """The published checkpoint for a weight name and backbone dimensions."""
    for size, (_, patch, layers, hidden) in _SIZES.items():
        if (config.patch_size, config.num_layers, config.hidden_size) == (patch, layers, hidden):
            return CHECKPOINTS[f"ViT-{size}_{weights}.npz"]
    raise WeightsError(
        f"pretrained {weights!r} weights exist only for vit_b16, vit_b32, vit_l16 and vit_l32; "
        f"this backbone has patch {config.patch_size}, {config.num_layers} layers, width "
        f"{config.hidden_size}: use --weights none, or a matching backbone"
    )


def checkpoint_representation_size(weights: str, config: ViTConfig) -> int | None:
    """Width of the ``pre_logits`` layer of a named checkpoint (None when it has none)."""
    return config.hidden_size if find_checkpoint(weights, config).has_representation else None


def resolve_checkpoint(weights: str, config: ViTConfig, download: bool = True) -> Path:
    """Path of the 2020 checkpoint of a weight name for a backbone; downloaded when missing.
    (Paths and other names go through :func:`vitkit.models.sources.pretrained_source`.)"""
    return resolve_checkpoint_file(find_checkpoint(weights, config), download)


def resolve_checkpoint_file(checkpoint: Checkpoint, download: bool = True) -> Path:
    """The cached file of a published checkpoint (2020 or AugReg), checked against its recorded
    SHA-256; downloaded when missing, unless ``download`` is False (then an error saying what to
    fetch, from where and where to put it)."""
    cached = cached_checkpoint(checkpoint)
    if cached is not None:
        verify_recorded_checksum(cached)
        return cached
    if not download:
        raise WeightsError(_missing_message(checkpoint, "it is not in the cache"))
    return download_checkpoint(checkpoint)


def _missing_message(checkpoint: Checkpoint, reason: str) -> str:
    target = weights_dirs()[0] / checkpoint.file_name
    return (
        f"cannot get {checkpoint.file_name}: {reason}. Download it on a connected machine from "
        f"{checkpoint.urls[0]} and put it at {target} (set VITKIT_HOME to use another folder), "
        f"or pass --weights /path/to/{checkpoint.file_name}"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify_recorded_checksum(path: Path) -> None:
    """Check a cached file against the SHA-256 recorded when it was downloaded (if any)."""
    record = _checksum_file(path)
    if record.is_file() and record.read_text().split()[0] != sha256_of(path):
        raise WeightsError(
            f"{path} does not match the checksum recorded at download ({record}); it was changed "
            f"or damaged: delete it and download it again with `vitkit weights download`"
        )


def download_checkpoint(checkpoint: Checkpoint, sha256: str | None = None) -> Path:
    """Download a checkpoint into the cache with a progress bar, atomically.

    The SHA-256 is checked against ``sha256`` when given and recorded beside the file, so later
    uses detect a damaged copy. Tries each published address in turn.
    """
    target = weights_dirs()[0] / checkpoint.file_name
    failures = []
    for url in checkpoint.urls:
        try:
            with atomic_output(target, overwrite=True) as temporary:
                digest = _fetch(url, temporary, checkpoint.file_name)
                if sha256 and digest != sha256.lower():
                    raise WeightsError(
                        f"{checkpoint.file_name} from {url} has SHA-256 {digest}, expected {sha256}; "
                        f"the download is damaged or the file changed upstream"
                    )
            _checksum_file(target).write_text(f"{digest}  {checkpoint.file_name}\n")
            return target
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as error:
            failures.append(f"{url}: {getattr(error, 'reason', error)}")
    raise WeightsError(_missing_message(checkpoint, "download failed (" + "; ".join(failures) + ")"))


def _fetch(url: str, destination: Path, label: str) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=30) as response, open(destination, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        with Progress(total, f"downloading {label} (bytes)") as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
        if total and out.tell() != total:
            raise OSError(f"connection closed after {out.tell()} of {total} bytes")
    return digest.hexdigest()


class _NpzArchive:
    def __init__(self, path: Path):
        try:
            self._archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise WeightsError(f"{path} is not a readable .npz checkpoint ({error})") from None
        if not hasattr(self._archive, "files"):
            raise WeightsError(f"{path} holds a single array, not a ViT checkpoint (.npz with named arrays)")
        self.files = self._archive.files
        self.path = path

    def keys(self) -> list[str]:
        return list(self.files)

    def __contains__(self, key: object) -> bool:
        return key in self.files

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._archive[key]
        except ValueError as error:  # object arrays would need pickle
            raise WeightsError(f"{self.path}: array {key!r} cannot be read safely ({error})") from None

    def __enter__(self) -> "_NpzArchive":
        return self

    def __exit__(self, *exc_info) -> None:
        self._archive.close()


def _open_npz(path: Path) -> _NpzArchive:
    return _NpzArchive(path)


# Variable names inside vitkit's backbone (after the backbone's own name) -> Flax names.
_LEAF_NAMES = {"gamma": "scale", "beta": "bias"}


def flax_name(relative_path: str) -> str:
    """``encoderblock_0/LayerNorm_0/gamma`` -> ``Transformer/encoderblock_0/LayerNorm_0/scale``."""
    parts = relative_path.split("/")
    parts[-1] = _LEAF_NAMES.get(parts[-1], parts[-1])
    if parts[0] == "class_token":
        return "cls"
    if parts[0].startswith("encoderblock_") or parts[0] in ("posembed_input", "encoder_norm"):
        parts.insert(0, "Transformer")
    return "/".join(parts)


def backbone_arrays(arrays: Mapping[str, np.ndarray], variables: Iterable, grid: tuple[int, int], source: str) -> list[np.ndarray]:
    """Arrays for each backbone variable, by Flax name, reshaped and checked; nothing assigned yet.

    Raises a :class:`WeightsError` naming what differs (depth, width, patch size, ...) before
    any variable is touched, so a mismatch never leaves a half-loaded model.
    """
    variables = list(variables)
    _check_depth(arrays, variables, source)
    values = []
    for variable in variables:
        relative = variable.path.split("/", 1)[1]
        key = flax_name(relative)
        if key not in arrays:
            raise WeightsError(f"{source} has no {key!r}, which the backbone needs ({variable.path})")
        value = np.asarray(arrays[key])
        if relative == "posembed_input/pos_embedding":
            value = resample_position_embedding(value, grid, 1, "bilinear")
        if value.size != np.prod(variable.shape):
            raise WeightsError(
                f"{source}: {key} has shape {value.shape}, the backbone expects {tuple(variable.shape)}"
                f"{_shape_hint(relative, value.shape, tuple(variable.shape))}"
            )
        values.append(value.reshape(variable.shape))
    return values


def _check_depth(arrays: Mapping[str, np.ndarray], variables: list, source: str) -> None:
    def blocks(names: Iterable[str]) -> set[str]:
        return {part for name in names for part in name.split("/") if part.startswith("encoderblock_")}

    have, need = len(blocks(arrays.keys())), len(blocks(v.path for v in variables))
    if have != need:
        raise WeightsError(f"{source} has {have} encoder blocks, the backbone has {need}: use a backbone of depth {have}")


def _shape_hint(relative: str, found: tuple, expected: tuple) -> str:
    if relative == "embedding/kernel" and found[:2] != expected[:2]:
        return f" (patch size {found[0]} in the file, {expected[0]} in the backbone)"
    if found and expected and found[-1] != expected[-1]:
        return f" (width {found[-1]} in the file, {expected[-1]} in the backbone)"
    return ""


def load_backbone_checkpoint(backbone, weights: str, image_size: tuple[int, int]) -> Path:
    """Load the named 2020 checkpoint of a built backbone's dimensions into it, all or nothing."""
    path = resolve_checkpoint(weights, backbone.config)
    with _open_npz(path) as arrays:
        values = backbone_arrays(arrays, backbone.weights, backbone.grid_shape(image_size), str(path))
    for variable, value in zip(backbone.weights, values):
        variable.assign(value)
    return path
