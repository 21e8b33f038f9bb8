"""Train a StableSyncNet (LatentSync's lip-sync expert) with accelerate.

    accelerate launch train/train_syncnet.py --config train/configs/syncnet_16_pixel_attn.yaml \
        train_data=DATA val_data=VAL_DATA output_dir=outputs/syncnet
    python train/train_syncnet.py --config train/configs/syncnet_tiny.yaml train_data=clips/ max_train_steps=200

DATA is a folder of aligned 25 fps clips with audio, or a `datasets` dataset (saved folder, parquet folder or Hub
id) whose `video` column holds mp4 bytes. Any setting of `latentsync.training.syncnet_trainer.SyncNetTrainingConfig`
can be overridden as ``key=value`` (YAML value syntax; ``model_config.KEY=VALUE`` for one model argument).
Resume with ``resume_from_checkpoint=latest`` (or a checkpoint folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from latentsync.training.syncnet_trainer import load_syncnet_config, train_syncnet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (train/configs/syncnet_*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value settings that override the config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_syncnet_config(args.config, args.overrides)
        cfg.validate()
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    result = train_syncnet(cfg)
    print(json.dumps({"global_step": result["global_step"], "final_val": result["final_val"],
                      "model_dir": result["model_dir"], "loss_chart": result["loss_chart"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
