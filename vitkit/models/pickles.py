"""PyTorch checkpoints are pickles: recognised, refused, and what to do instead.

Nothing in vitkit unpickles a file: unpickling runs whatever code the file names.
"""

from __future__ import annotations

import zipfile
from pathlib import Path


def holds_pickle(path: Path) -> bool:
    """Whether a zip archive holds a pickle (``data.pkl``), as ``torch.save`` writes it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def pickle_refusal(path: Path) -> str:
    """Why a pickle is refused, and how to turn a PyTorch checkpoint into a file vitkit reads."""
    return (f"{path} is a Python pickle; vitkit never unpickles files (they can run code). "
            f"{conversion_advice(path)}; else give a .npz checkpoint or an HDF5 .h5 / .weights.h5 file")


def conversion_advice(path: Path | str) -> str:
    """Where to find, or how to make, the ``.safetensors`` of a PyTorch checkpoint."""
    return (f"Use the checkpoint's model.safetensors (e.g. --weights hf-hub:timm/NAME), or convert it where "
            f"timm is installed: m = timm.create_model(ARCHITECTURE, pretrained=True, pretrained_cfg_overlay="
            f"{{'file': '{path}'}}); safetensors.torch.save_file(m.state_dict(), 'model.safetensors')")
