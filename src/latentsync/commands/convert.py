"""``latentsync convert --official ID --output DIR``: official release -> diffusers-format pipeline folder.

The options and the output folder are checked before torch, the loaders and the pipeline are imported (``--help``
and a bad output answer in a fraction of a second).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os

from ..devices import DTYPE_NAMES, torch_dtype
from ..errors import LatentSyncInputError, first_line
from ..tempfiles import check_output_folder, write_folder_atomically

logger = logging.getLogger("latentsync")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentsync convert",
        description="Convert an official LatentSync release (latentsync_unet.pt, whisper/tiny.pt) to a "
                    "diffusers-format pipeline folder (safetensors + model_index.json).",
    )
    p.add_argument("--official", required=True, help="Hub id (e.g. ByteDance/LatentSync-1.6) or folder of the release")
    p.add_argument("--output", required=True, help="folder to write the converted pipeline to (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT folder")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also upload the folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--resolution", type=int, default=None, help="face resolution (default: 512 for 1.6, else 256)")
    p.add_argument("--vae", default=None, help="Hub id or folder of the VAE (default stabilityai/sd-vae-ft-mse)")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="fp32", help="dtype of the saved weights (default fp32)")
    p.add_argument("--syncnet", action="store_true",
                   help="also convert stable_syncnet.pt into OUTPUT/syncnet (for training)")
    return p


def convert(argv: list[str]) -> int:
    """Convert the official release ``--official`` into the pipeline folder ``--output`` (optionally pushed)."""
    args = parser().parse_args(argv)
    args.official, args.output = os.path.expanduser(args.official), os.path.expanduser(args.output)  # quoted ~
    # the release is only read: the output may not be it, be inside it or hold it, nor replace a folder unasked
    local = [args.official] if os.path.exists(args.official) else []
    check_output_folder(args.output, local, args.overwrite)
    # deferred: the loaders and the pipeline import torch, diffusers and transformers (seconds)
    official = importlib.import_module("latentsync.loaders.official")
    LatentSyncPipeline = importlib.import_module("latentsync.pipeline").LatentSyncPipeline
    dtype = torch_dtype(args.dtype)
    pipe = LatentSyncPipeline(**official.load_official_components(
        args.official, resolution=args.resolution, vae_id=args.vae or official.OFFICIAL_VAE_ID, torch_dtype=dtype))
    syncnet = None
    if args.syncnet:
        files = official.resolve_official_files(args.official, include_syncnet=True)
        syncnet = official.load_official_syncnet(files.syncnet, torch_dtype=dtype)

    def write(folder: str) -> None:
        pipe.save_pretrained(folder, safe_serialization=True)
        if syncnet is not None:
            syncnet.save_pretrained(os.path.join(folder, "syncnet"), safe_serialization=True)

    try:
        write_folder_atomically(args.output, write)  # a failed conversion leaves no half folder
    except OSError as exc:  # a full disk, a read-only or vanished folder: one line; nothing is left behind
        raise LatentSyncInputError(f"cannot write {args.output}: {first_line(exc)} (nothing was written)") from exc
    logger.info("saved the converted pipeline (resolution %d) to %s", pipe.config.resolution, args.output)
    if args.push_to_hub:
        hub_id = importlib.import_module("latentsync.hub").hub_id  # deferred: huggingface_hub, for --push-to-hub only
        pipe.push_folder_to_hub(args.output, args.push_to_hub, private=args.private or None,
                                base_model=hub_id(args.official),
                                commit_message=f"Convert {args.official} to the diffusers format (latentsync convert)")
    return 0
