"""The networks of latentsync.models: the U-Net's official normalisation, and save_pretrained / from_pretrained of
the networks that became diffusers models in the re-layout (FID Inception, hyperIQA, classic SyncNet, VGG-16)."""

from __future__ import annotations

import pytest
import torch

from latentsync.models import FIDInceptionV3, HyperIQA, SyncNetV2
from latentsync.testing import build_tiny_pipeline, build_tiny_vgg


@pytest.mark.parametrize("motion", ["all", "decoder", "none"])
def test_unet_frame_pooled_norm_couples_frames(motion):
    torch.manual_seed(0)
    unet = build_tiny_pipeline(motion_modules=motion).unet.double()
    x = torch.randn(1, 13, 6, 8, 8, dtype=torch.float64)
    ctx = torch.randn(6, 30, 64, dtype=torch.float64)
    full = unet(x, 500, ctx).sample
    first = unet(x[:, :, :3], 500, ctx[:3]).sample
    # official behaviour: ResNet statistics pool the clip, so a frame's output depends on the other frames
    assert not torch.allclose(full[:, :, :3], first, atol=1e-6)
    assert full.shape == (1, 4, 6, 8, 8)


@pytest.mark.parametrize("build, inputs", [
    (lambda: FIDInceptionV3(), lambda: (torch.rand(1, 3, 75, 75),)),
    (lambda: HyperIQA(), lambda: (torch.rand(1, 3, 224, 224),)),
    (lambda: SyncNetV2(embed_dim=32), lambda: (torch.rand(1, 3, 5, 224, 224) * 255, torch.randn(1, 1, 13, 20))),
    (build_tiny_vgg, lambda: (torch.rand(1, 3, 32, 32),)),
], ids=["fid_inception", "hyperiqa", "syncnet_v2", "vgg16"])
def test_networks_save_and_load_as_diffusers_models(build, inputs, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    model.save_pretrained(tmp_path / "model")
    loaded = type(model).from_pretrained(tmp_path / "model").eval()
    def public(config):  # tuples come back as lists from config.json
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(model.config)
    x = inputs()
    with torch.no_grad():
        ours, theirs = model(*x), loaded(*x)
    for a, b in zip(ours if isinstance(ours, (list, tuple)) else [ours],
                    theirs if isinstance(theirs, (list, tuple)) else [theirs]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fid_inception_still_reads_the_pth_weights(tmp_path):
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    torch.save(model.state_dict(), tmp_path / "pt_inception.pth")
    loaded = FIDInceptionV3.from_pretrained(str(tmp_path / "pt_inception.pth"))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded.fc.weight, model.fc.weight, rtol=0, atol=0)


def test_diffusers_empty_float32_notice_is_filtered():
    """diffusers' notice about modules to keep in float32 is dropped when its list is empty (it prints one on every
    ``model.to(dtype)``), and kept when it names modules."""
    import logging

    import latentsync.models  # noqa: F401 - installs the filter

    logger = logging.getLogger("diffusers.models.modeling_utils")

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(logger.name, logging.WARNING, __file__, 1, message, None, None)

    assert not logger.filter(record("There are modules in AutoencoderKL that should be kept in float32: []. Casting"))
    assert logger.filter(record("There are modules in T5 that should be kept in float32: ['wo']. Casting"))
