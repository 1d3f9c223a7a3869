"""The AugReg checkpoints ("How to train your ViT?", Steiner et al. 2021) by timm's names.

Google publishes them as Flax ``.npz`` files (the layout of the 2020 checkpoints) under
https://storage.googleapis.com/vit_models/augreg/; timm names them ``ARCHITECTURE.TAG``:
``augreg_in21k`` (ImageNet-21k, with its 21843-class top), ``augreg_in21k_ft_in1k`` (then
fine-tuned on ImageNet-1k) and ``augreg_in1k`` (ImageNet-1k only). No checksums are published;
the SHA-256 of a download is recorded beside it and checked on later use. They are cached with
the 2020 checkpoints (:func:`vitkit.models.weights.weights_dirs`).
"""

from __future__ import annotations

import dataclasses

from vitkit.errors import WeightsError

BASE_URL = "https://storage.googleapis.com/vit_models/augreg/"

# timm name -> file name (without .npz) of the published checkpoint.
_FILES = {
    "vit_tiny_patch16_224.augreg_in21k_ft_in1k":
        "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "vit_tiny_patch16_384.augreg_in21k_ft_in1k":
        "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    "vit_small_patch32_224.augreg_in21k_ft_in1k":
        "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "vit_small_patch32_384.augreg_in21k_ft_in1k":
        "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    "vit_small_patch16_224.augreg_in21k_ft_in1k":
        "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "vit_small_patch16_384.augreg_in21k_ft_in1k":
        "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    "vit_base_patch32_224.augreg_in21k_ft_in1k":
        "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "vit_base_patch32_384.augreg_in21k_ft_in1k":
        "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384",
    "vit_base_patch16_224.augreg_in21k_ft_in1k":
        "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    "vit_base_patch16_384.augreg_in21k_ft_in1k":
        "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384",
    "vit_base_patch8_224.augreg_in21k_ft_in1k":
        "B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    "vit_large_patch16_224.augreg_in21k_ft_in1k":
        "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    "vit_large_patch16_384.augreg_in21k_ft_in1k":
        "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384",
    "vit_small_patch16_224.augreg_in1k":
        "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    "vit_small_patch16_384.augreg_in1k":
        "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384",
    "vit_base_patch32_224.augreg_in1k":
        "B_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    "vit_base_patch32_384.augreg_in1k":
        "B_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384",
    "vit_base_patch16_224.augreg_in1k":
        "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    "vit_base_patch16_384.augreg_in1k":
        "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384",
    "vit_tiny_patch16_224.augreg_in21k":
        "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
    "vit_small_patch32_224.augreg_in21k":
        "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
    "vit_small_patch16_224.augreg_in21k":
        "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
    "vit_base_patch32_224.augreg_in21k":
        "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0",
    "vit_base_patch16_224.augreg_in21k":
        "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    "vit_base_patch8_224.augreg_in21k":
        "B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    "vit_large_patch16_224.augreg_in21k":
        "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1",
}


@dataclasses.dataclass(frozen=True)
class AugRegCheckpoint:
    """A published AugReg checkpoint: its timm name, file name and download address."""

    name: str
    file_stem: str

    @property
    def file_name(self) -> str:
        return f"{self.file_stem}.npz"

    @property
    def urls(self) -> tuple[str, ...]:
        return (BASE_URL + self.file_name,)

    @property
    def architecture(self) -> str:
        """The timm architecture, e.g. ``vit_base_patch16_224``."""
        return self.name.split(".")[0]

    @property
    def image_size(self) -> int:
        return int(self.architecture.rsplit("_", 1)[1])


AUGREG: dict[str, AugRegCheckpoint] = {name: AugRegCheckpoint(name, stem) for name, stem in _FILES.items()}


def augreg_named(name: str) -> AugRegCheckpoint | None:
    """The AugReg checkpoint of a timm name (``vit_base_patch16_224.augreg_in21k``) or of its
    file name (``.npz`` optional); None when ``name`` is neither."""
    wanted = name.strip().removesuffix(".npz")
    for checkpoint in AUGREG.values():
        if wanted in (checkpoint.name, checkpoint.file_stem):
            return checkpoint
    if ".augreg" in wanted:
        raise WeightsError(f"unknown AugReg checkpoint {name!r}; known: {', '.join(AUGREG)} (see `vitkit weights list`)")
    return None
