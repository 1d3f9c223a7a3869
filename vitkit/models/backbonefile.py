"""The pre-trained backbone file, ``NAME.backbone.weights.h5`` (written by ``vitkit pretrain``).

An HDF5 file holding the backbone's variables, in the order of ``VisionTransformer.weights``,
as datasets ``backbone/0000``, ``backbone/0001``, ... (each with its variable path, relative to
the backbone, in the attribute ``path``), and in the root attribute ``vitkit`` a JSON string::

    {"format": "vitkit-backbone", "format_version": 1,
     "backbone": {ViTConfig fields}, "image_size": [H, W],
     "preprocess": "tf", "resize_mode": "stretch", "interpolation": "bilinear",
     "pretraining": {the options of the run}, "epochs_done": N, "loss": L,
     "versions": {"vitkit": ..., "keras": ..., "backend": ...}}

The file tells its whole architecture (tokenizer and attention included), so ``vitkit train
--weights FILE`` builds that backbone and loads the arrays into it (see
:mod:`vitkit.models.sources`); the position embedding is resampled (bilinearly, as for ``.npz``
checkpoints) when the classifier's image size gives another patch grid.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from vitkit.errors import WeightsError
from vitkit.fileio import atomic_output
from vitkit.models.config import ViTConfig
from vitkit.models.posembed import resample_position_embedding

BACKBONE_FORMAT = "vitkit-backbone"
BACKBONE_FORMAT_VERSION = 1
BACKBONE_SUFFIX = ".backbone.weights.h5"
METADATA_KEY = "vitkit"
_GROUP = "backbone"


def software_versions() -> dict[str, str]:
    """The versions that wrote a file: vitkit, Keras and the backend."""
    from vitkit import __version__

    return {"vitkit": __version__, "keras": keras.__version__, "backend": keras.backend.backend()}


def write_backbone_file(backbone, path: str | os.PathLike, metadata: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a built backbone's variables and ``metadata`` (besides the format, backbone and
    versions) to ``path``, atomically.

    Raises:
        WeightsError: ``path`` does not end in ``.backbone.weights.h5``.
        OutputExistsError: ``path`` exists and not ``overwrite``.
    """
    path = Path(path)
    if not path.name.endswith(BACKBONE_SUFFIX):
        raise WeightsError(f"backbone files end in {BACKBONE_SUFFIX}; got {path}")
    described = {"format": BACKBONE_FORMAT, "format_version": BACKBONE_FORMAT_VERSION,
                 "backbone": backbone.config.to_dict(), **metadata, "versions": software_versions()}
    with atomic_output(path, overwrite=overwrite, suffix=".h5") as temporary:
        with h5py.File(temporary, "w") as handle:
            group = handle.create_group(_GROUP)
            for i, variable in enumerate(backbone.weights):
                dataset = group.create_dataset(f"{i:04d}", data=keras.ops.convert_to_numpy(variable))
                dataset.attrs["path"] = variable.path.split("/", 1)[-1]
            handle.attrs[METADATA_KEY] = json.dumps(described)
    return path


@dataclasses.dataclass(frozen=True)
class BackboneFile:
    """A backbone file opened: what its metadata tells; :meth:`arrays` reads the weights."""

    path: Path
    metadata: dict[str, Any]
    config: ViTConfig
    image_size: tuple[int, int]

    @property
    def preprocess(self) -> str:
        return self.metadata.get("preprocess", "tf")

    @property
    def interpolation(self) -> str:
        return self.metadata.get("interpolation", "bilinear")

    def arrays(self) -> dict[str, np.ndarray]:
        """The variables' arrays by relative path, in the backbone's variable order."""
        try:
            with h5py.File(self.path, "r") as handle:
                group = handle[_GROUP]
                return {str(group[name].attrs["path"]): np.asarray(group[name][()]) for name in sorted(group)}
        except (OSError, KeyError) as error:
            raise WeightsError(f"{self.path}: its weights cannot be read ({error}); write it again with vitkit pretrain") from None


def read_backbone_file(path: str | os.PathLike) -> BackboneFile:
    """Open a backbone file (metadata only).

    Raises:
        WeightsError: not an HDF5 file, a vitkit classifier (model) file, an HDF5 file of another
            tool, or a damaged or newer backbone file; each message says what to give instead.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get(METADATA_KEY)
    except OSError as error:
        raise WeightsError(f"{path} is not a readable HDF5 file ({error})") from None
    try:
        metadata = json.loads(raw) if raw is not None else {}
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{path}: its vitkit metadata is damaged ({error})") from None
    kind = metadata.get("format")
    if kind == "vitkit":
        raise WeightsError(
            f"{path} is a trained classifier (a vitkit model file), not a pre-trained backbone: --weights takes "
            f"NAME{BACKBONE_SUFFIX} from `vitkit pretrain` or a checkpoint; use this file with vitkit "
            f"predict/evaluate/explain, or continue its interrupted run with vitkit train --resume"
        )
    if kind != BACKBONE_FORMAT:
        raise WeightsError(
            f"{path} is an HDF5 file but not a vitkit backbone file; --weights takes NAME{BACKBONE_SUFFIX} from "
            f"`vitkit pretrain`, or a checkpoint (convert files of other tools with `vitkit weights convert`)"
        )
    if metadata.get("format_version", 0) > BACKBONE_FORMAT_VERSION:
        raise WeightsError(f"{path} was written by a newer vitkit (backbone format {metadata['format_version']}); "
                           f"upgrade vitkit")
    try:
        config = ViTConfig.from_dict(metadata["backbone"])
        size = tuple(int(side) for side in metadata["image_size"])
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"{path}: its metadata does not describe a backbone ({error})") from None
    return BackboneFile(path, metadata, config, (size[0], size[1]))


def backbone_file_values(arrays: dict[str, np.ndarray], backbone, grid: tuple[int, int],
                         old_grid: tuple[int, int], source: str) -> list[np.ndarray]:
    """Arrays for every variable of a built ``backbone`` whose patch grid is ``grid`` (the file's
    is ``old_grid``); checked before anything is assigned.

    Raises:
        WeightsError: the file holds another number of variables or another shape.
    """
    everything = list(backbone.weights)
    variables = everything
    # A distillation token (--teacher) is new to a pre-trained backbone: it keeps its initial
    # value, and its position starts as the class token's.
    added_token = backbone.config.distillation_token and not any("dist_token" in name for name in arrays)
    if added_token:
        variables = [variable for variable in variables if "dist_token" not in variable.path]
    if len(arrays) != len(variables):
        raise WeightsError(f"{source} holds {len(arrays)} backbone variables, the backbone built from it has "
                           f"{len(variables)}; drop the options that change the architecture")
    prefix = 0 if backbone.config.no_embed_class else backbone.config.prefix_tokens - int(added_token)
    values = []
    for (name, value), variable in zip(arrays.items(), variables):
        if name.endswith("pos_embedding"):
            value = resample_position_embedding(value, grid, prefix, "bilinear", old_grid)
            if added_token and prefix:
                value = np.concatenate([value[:, :1], value[:, :1], value[:, 1:]], axis=1)
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightsError(f"{source}: {name} has shape {tuple(value.shape)}, the backbone expects "
                               f"{tuple(variable.shape)}; drop the options that change the architecture")
        values.append(value)
    if added_token:  # back into the backbone's order, the new token's current value in its place
        loaded = iter(values)
        values = [np.asarray(keras.ops.convert_to_numpy(variable)) if "dist_token" in variable.path else next(loaded)
                  for variable in everything]
    return values
