"""timm checkpoints on the Hugging Face Hub, fetched with ``huggingface_hub``.

``hf_hub_download`` is called with its own defaults, so its cache (``HF_HOME`` /
``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), its offline mode (``HF_HUB_OFFLINE=1``:
the cache only, no network), its endpoint (``HF_ENDPOINT``) and its token (``HF_TOKEN`` or
``hf auth login``, for gated or private repositories) apply as they do for every other tool.
"""

from __future__ import annotations

from pathlib import Path

from vitkit.errors import WeightsError
from vitkit.models.pickles import conversion_advice

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# Checkpoints `vitkit weights list` shows (any timm ViT of a supported architecture loads).
RECOMMENDED = (
    "timm/vit_small_patch14_reg4_dinov2.lvd142m", "timm/vit_base_patch14_reg4_dinov2.lvd142m",
    "timm/vit_large_patch14_reg4_dinov2.lvd142m", "timm/vit_small_patch14_dinov2.lvd142m",
    "timm/deit3_small_patch16_224.fb_in22k_ft_in1k", "timm/deit3_base_patch16_224.fb_in22k_ft_in1k",
    "timm/deit3_base_patch16_384.fb_in22k_ft_in1k", "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm/vit_base_patch16_224.augreg_in21k",
)


def parse_repo(text: str) -> tuple[str, str | None]:
    """``ORG/NAME`` or ``ORG/NAME@REVISION`` -> ``(repo_id, revision)``."""
    repo, _, revision = text.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise WeightsError(f"hf-hub:{text} is not a Hub model name; write hf-hub:ORG/NAME, e.g. "
                           f"hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m")
    return repo, revision or None


def hub_files(text: str, force: bool = False) -> tuple[Path | None, Path]:
    """``(config.json or None, model.safetensors)`` of ``ORG/NAME[@REVISION]``, from the cache or the Hub.

    Raises:
        WeightsError: one line: what could not be fetched and why, the addresses of the files,
            and where to put them (the cache folder and ``HF_HOME``, or a folder for --weights).
    """
    repo, revision = parse_repo(text)
    return (_download(repo, revision, CONFIG_FILE, force, optional=True),
            _download(repo, revision, WEIGHTS_FILE, force))


def cached_hub_file(repo: str) -> Path | None:
    """The cached ``model.safetensors`` of a Hub repository (main revision), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, WEIGHTS_FILE)
    return Path(found) if isinstance(found, str) else None


def _download(repo: str, revision: str | None, filename: str, force: bool = False,
              optional: bool = False) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, force_download=force))
    except LocalEntryNotFoundError:
        raise WeightsError(offline_message(repo, revision)) from None
    except GatedRepoError:
        raise WeightsError(f"hf-hub:{repo} is gated: accept its terms on https://huggingface.co/{repo}, then "
                           f"log in with `hf auth login` or set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"hf-hub:{repo} does not exist on the Hub, or is private (log in with `hf auth login` "
                           f"or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise WeightsError(f"hf-hub:{repo} has no revision {revision!r}") from None
    except EntryNotFoundError:
        if optional:
            return None
        if filename == WEIGHTS_FILE:
            raise WeightsError(f"hf-hub:{repo} has no {WEIGHTS_FILE} (vitkit never unpickles PyTorch files). "
                               f"{conversion_advice('pytorch_model.bin')}") from None
        raise WeightsError(f"hf-hub:{repo} has no {filename}") from None
    except (HfHubHTTPError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"cannot fetch {filename} of hf-hub:{repo} ({first}); {_advice(repo, revision)}") from None


def offline_message(repo: str, revision: str | None) -> str:
    """One line: why the checkpoint cannot be had, the files and their addresses, and where to
    put them (the Hugging Face cache, moved with HF_HOME, or a folder for --weights)."""
    from huggingface_hub import constants

    why = "offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
    return (f"cannot get {WEIGHTS_FILE} and {CONFIG_FILE} of hf-hub:{repo}: {why} and they are not in "
            f"the Hugging Face cache {constants.HF_HUB_CACHE}; {_advice(repo, revision)}")


def _advice(repo: str, revision: str | None) -> str:
    from huggingface_hub import constants

    folder = f"{constants.ENDPOINT}/{repo}/resolve/{revision or 'main'}"
    return (f"on a connected machine run `hf download {repo} {CONFIG_FILE} {WEIGHTS_FILE}` and copy the cache "
            f"here (set HF_HOME to use another folder), or download {folder}/{WEIGHTS_FILE} and "
            f"{folder}/{CONFIG_FILE} into one folder and pass --weights FOLDER")
