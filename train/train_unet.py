"""Train the LatentSync U-Net (stage 1 or stage 2) with accelerate.

    accelerate launch train/train_unet.py --config train/configs/unet_stage2.yaml train_data=DATA output_dir=OUT
    python train/train_unet.py --config train/configs/unet_tiny.yaml train_data=clips/ mixed_precision=no

Any setting of `latentsync.training.UNetTrainingConfig` can be overridden as ``key=value`` (YAML value syntax).
Resume a run with ``resume_from_checkpoint=latest`` (or a checkpoint folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from latentsync.training.config import load_config
from latentsync.training.unet_trainer import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (train/configs/unet_*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value settings that override the config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        cfg.validate()
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    result = train(cfg)
    print(json.dumps({k: v for k, v in result.items() if k != "last_losses"} | {"last": result["last_losses"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
