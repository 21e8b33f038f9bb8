"""Deprecated: the mouth mask moved to :mod:`latentsync.face`."""

from ._deprecation import warn_moved
from .face.mask import MASK_ASSET, latent_mouth_mask, mouth_mask  # noqa: F401

warn_moved(__name__, "latentsync.face")
