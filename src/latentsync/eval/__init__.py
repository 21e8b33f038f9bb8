"""Evaluation tools: SyncNet accuracy, audio-visual offset / sync confidence (``latentsync eval ...``).

Subcommands live in [`latentsync.eval.cli.EVAL_COMMANDS`]; add new ones with [`register_eval_command`].
"""

from .cli import EVAL_COMMANDS, register_eval_command
from .sync_confidence import SyncEstimate, SyncNetV2, estimate_sync, load_sync_model, offset_confidence
from .syncnet_acc import SyncNetAccuracy, evaluate_syncnet

__all__ = [
    "EVAL_COMMANDS",
    "SyncEstimate",
    "SyncNetAccuracy",
    "SyncNetV2",
    "estimate_sync",
    "evaluate_syncnet",
    "load_sync_model",
    "offset_confidence",
    "register_eval_command",
]
