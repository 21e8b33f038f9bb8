"""Train the LatentSync U-Net (stage 1 or stage 2) with accelerate: ``--help`` for the usage (the command line is
`latentsync.commands.train`)."""

from __future__ import annotations

import sys

from latentsync.commands.train import train_unet_command as main

if __name__ == "__main__":
    sys.exit(main())
