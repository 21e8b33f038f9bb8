"""Train a StableSyncNet (LatentSync's lip-sync expert) with accelerate: ``--help`` for the usage (the command line
is `latentsync.commands.train`)."""

from __future__ import annotations

import sys

from latentsync.commands.train import train_syncnet_command as main

if __name__ == "__main__":
    sys.exit(main())
