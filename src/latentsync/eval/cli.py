"""Deprecated: the ``latentsync eval`` command line moved to :mod:`latentsync.commands.eval`."""

from .._deprecation import warn_moved
from ..commands.eval import EVAL_COMMANDS, main, register_eval_command, sync_conf, syncnet_acc  # noqa: F401

warn_moved(__name__, "latentsync.commands.eval")
