"""LoRA adapters through diffusers' loader API on the pipeline (a tiny LoRA trained for a few steps by the real
trainer, loaded into a fresh pipeline), wrong or empty adapter files, and the attention backends (SDPA by default,
xformers only where installed on a CUDA machine)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import decode
from latentsync import LatentSyncPipeline
from latentsync.loaders.lora import LoraAdapterError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


@pytest.fixture(scope="module")
def trained_lora(tmp_path_factory):
    """A rank-4 LoRA on every attention projection of the tiny 64 px U-Net, trained 2 stage-1 steps by
    ``train`` (the adapter lands in ``output_dir/lora``); returns (base pipeline folder, run folder)."""
    from latentsync.testing import save_tiny_training_models, write_synthetic_clip
    from latentsync.training.config import load_config
    from latentsync.training.unet_trainer import train

    root = tmp_path_factory.mktemp("lora")
    clips = root / "clips"
    clips.mkdir()
    write_synthetic_clip(str(clips / "clip0.mp4"), seed=0)
    # stage 1 (noise loss only) on the base pipeline's architecture (temporal layers kept): the adapter fits it
    overrides = {**save_tiny_training_models(str(root / "models")), "train_data": str(clips), "stage": 1,
                 "motion_modules": "all", "lora_rank": 4, "trainable_modules": None, "max_train_steps": 2,
                 "learning_rate": 1e-2, "output_dir": str(root / "run")}
    cfg = load_config(os.path.join(ROOT, "train", "configs", "unet_tiny.yaml"),
                      [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    train(cfg)
    return overrides["components_from"], root / "run"


@pytest.fixture(scope="module")
def window(example_face):
    """One 16-frame window: the example face's first frames and 0.64 s of a tone."""
    frames = decode(example_face)[:16]
    audio = (0.3 * np.sin(np.arange(10240) / 7.0)).astype(np.float32)
    return frames, audio


def _frames(pipe, window):
    frames, audio = window
    return pipe(frames, audio, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0)).frames


def test_trained_lora_loads_changes_outputs_and_unloads_bit_for_bit(trained_lora, window):
    base_dir, run = trained_lora
    weights = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") and ".lora_" in k for k in weights)  # diffusers' pipeline format
    assert (run / "lora" / "README.md").is_file()

    pipe = LatentSyncPipeline.from_pretrained(base_dir)  # a fresh pipeline
    pipe.set_progress_bar_config(disable=True)
    original = _frames(pipe, window)
    pipe.load_lora_weights(run / "lora", adapter_name="mine")
    assert pipe.get_active_adapters() == ["mine"]
    adapted = _frames(pipe, window)
    assert not np.array_equal(adapted, original)
    pipe.unload_lora_weights()
    assert not any("lora" in name for name in pipe.unet.state_dict())
    assert np.array_equal(_frames(pipe, window), original)  # unloaded: the original, bit for bit


def unet_forward(pipe):
    """One U-Net forward pass of ``pipe`` on fixed random inputs, as a function (compare it across adapter changes)."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 13, 16, 8, 8, generator=generator)
    context = torch.randn(16, 30, pipe.unet.config.cross_attention_dim, generator=generator)

    def forward():
        with torch.no_grad():
            return pipe.unet(sample, 10, encoder_hidden_states=context).sample

    return forward


def test_adapter_strength_fuse_and_unfuse(trained_lora):
    """set_adapters scales the adapter (0 = base model), fuse_lora merges it into the weights with the same output,
    unfuse_lora takes it out again (up to round-off), on one U-Net forward pass."""
    base_dir, run = trained_lora
    pipe = LatentSyncPipeline.from_pretrained(base_dir)
    forward = unet_forward(pipe)

    original = forward()
    pipe.load_lora_weights(run / "lora", adapter_name="mine")
    adapted = forward()
    assert (adapted - original).abs().max() > 1e-4
    pipe.set_adapters(["mine"], adapter_weights=[0.0])
    assert torch.equal(forward(), original)
    pipe.set_adapters(["mine"], adapter_weights=[0.5])
    half = forward()
    assert (half - original).abs().max() < (adapted - original).abs().max()
    pipe.set_adapters(["mine"], adapter_weights=[1.0])
    pipe.fuse_lora()
    assert pipe.num_fused_loras == 1
    torch.testing.assert_close(forward(), adapted, rtol=1e-4, atol=1e-5)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    torch.testing.assert_close(forward(), original, rtol=1e-4, atol=1e-5)


def test_unfuse_restores_the_weights_and_strength_bit_for_bit(trained_lora):
    """fuse_lora (with a lora_scale) then unfuse_lora gives back exactly the adapted model at its own strength, and
    unload_lora_weights then exactly the base: the same adapter loads again with strict_base (its record's weights
    hash still matches). diffusers alone subtracts the adapter (round-off) and keeps the lora_scale on it."""
    base_dir, run = trained_lora
    pipe = LatentSyncPipeline.from_pretrained(base_dir)
    base_weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    forward = unet_forward(pipe)

    pipe.load_lora_weights(run / "lora", adapter_name="mine", strict_base=True)
    pipe.set_adapters(["mine"], adapter_weights=[0.8])
    adapted = forward()
    pipe.fuse_lora(lora_scale=0.5)
    assert (forward() - adapted).abs().max() > 1e-4  # half the strength while fused
    pipe.unfuse_lora()
    assert torch.equal(forward(), adapted)
    pipe.fuse_lora()
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    after = pipe.unet.state_dict()
    assert set(after) == set(base_weights) and all(torch.equal(after[k], v) for k, v in base_weights.items())
    pipe.load_lora_weights(run / "lora", adapter_name="again", strict_base=True)  # the base is recognised
    pipe.set_adapters(["again"], adapter_weights=[0.8])
    assert torch.equal(forward(), adapted)


def test_save_pretrained_refuses_a_unet_with_adapters(trained_lora, tmp_path):
    """Saving while adapters are loaded would write peft's ``base_layer`` weights, which load as random layers:
    refused (also after delete_adapters, whose layers stay); after fuse_lora + unload_lora_weights the saved
    pipeline reloads with the adapter merged."""
    base_dir, run = trained_lora
    pipe = LatentSyncPipeline.from_pretrained(base_dir)
    pipe.load_lora_weights(run / "lora", adapter_name="mine")
    with pytest.raises(LoraAdapterError, match=r"unload_lora_weights\(\) first"):
        pipe.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()
    pipe.delete_adapters("mine")
    with pytest.raises(LoraAdapterError, match="deleted adapters"):
        pipe.save_pretrained(tmp_path / "saved")
    pipe.unload_lora_weights()
    pipe.load_lora_weights(run / "lora", adapter_name="mine")
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # the adapter stays merged
    merged = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = LatentSyncPipeline.from_pretrained(tmp_path / "saved").unet.state_dict()
    assert set(reloaded) == set(merged) and all(torch.equal(reloaded[k], v) for k, v in merged.items())


def test_a_missing_adapter_folder_is_named(tiny_model_dir, tmp_path):
    pipe = LatentSyncPipeline.from_pretrained(tiny_model_dir)
    with pytest.raises(LoraAdapterError, match="no such file or folder"):
        pipe.load_lora_weights(tmp_path / "no-such-lora")


def test_unprefixed_adapter_from_save_lora_adapter_loads(trained_lora, tmp_path):
    """An adapter saved by ``unet.save_lora_adapter`` (keys without ``unet.``) loads too, instead of nothing."""
    base_dir, run = trained_lora
    weights = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    save_file({k[len("unet."):]: v for k, v in weights.items()}, tmp_path / "pytorch_lora_weights.safetensors")
    pipe = LatentSyncPipeline.from_pretrained(base_dir)
    pipe.load_lora_weights(tmp_path)
    loaded = {n: p for n, p in pipe.unet.named_parameters() if "lora_B" in n}
    assert len(loaded) == sum("lora_B" in k for k in weights)
    assert any(p.abs().sum() > 0 for p in loaded.values())


@pytest.mark.parametrize("case, message", [
    ("empty", "holds no weights"),
    ("not_lora", "not a LoRA adapter"),
    ("other_model", "does not have"),
    ("other_component", "no LoRA for"),
])
def test_wrong_or_empty_adapter_is_an_error(tiny_model_dir, trained_lora, tmp_path, case, message):
    _, run = trained_lora
    weights = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    bad = {
        "empty": {},
        "not_lora": {"unet.conv_in.weight": torch.zeros(2, 2)},
        "other_model": {k.replace("down_blocks", "transformer_blocks"): v for k, v in weights.items()},
        "other_component": {**weights, "text_encoder.layer.q.lora_A.weight": torch.zeros(4, 8)},
    }[case]
    save_file(bad, tmp_path / "pytorch_lora_weights.safetensors")
    pipe = LatentSyncPipeline.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(LoraAdapterError, match=message):
        pipe.load_lora_weights(tmp_path)
    after = pipe.unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_attention_defaults_to_sdpa_and_xformers_says_what_is_missing(tiny_pipe, monkeypatch):
    from diffusers.models.attention_processor import AttnProcessor2_0

    import latentsync.pipeline as pipeline_module

    processors = tiny_pipe.unet.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())
    monkeypatch.setattr(pipeline_module, "is_xformers_available", lambda: False)
    with pytest.raises(ImportError, match=r"latentsync\[xformers\]"):
        tiny_pipe.enable_xformers_memory_efficient_attention()
    monkeypatch.setattr(pipeline_module, "is_xformers_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        tiny_pipe.enable_xformers_memory_efficient_attention()
    assert all(isinstance(p, AttnProcessor2_0) for p in tiny_pipe.unet.attn_processors.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers needs a CUDA GPU")
def test_xformers_attention_on_cuda(tiny_model_dir, window):
    pytest.importorskip("xformers", reason="xformers is not installed (pip install 'latentsync[xformers]')")
    from diffusers.models.attention_processor import XFormersAttnProcessor

    pipe = LatentSyncPipeline.from_pretrained(tiny_model_dir).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    sdpa = _frames(pipe, window)
    pipe.enable_xformers_memory_efficient_attention()
    assert all(isinstance(p, XFormersAttnProcessor) for p in pipe.unet.attn_processors.values())
    assert np.abs(_frames(pipe, window).astype(int) - sdpa).max() <= 2


def test_command_line_lora_option(trained_lora):
    """``latentsync ... --lora DIR[:WEIGHT]`` (and ``batch``) loads the adapter at that strength."""
    from latentsync.commands.run import load_pipeline, parser

    base_dir, run = trained_lora
    args = parser().parse_args(["--video", "v.mp4", "--audio", "a.wav", "--output", "o.mp4", "--model",
                                os.fspath(base_dir), "--device", "cpu", "--lora", f"{run / 'lora'}:0.5"])
    pipe = load_pipeline(args)
    assert pipe.get_active_adapters() == ["lora_0"]
    layer = next(m for m in pipe.unet.modules() if hasattr(m, "scaling") and "lora_0" in getattr(m, "scaling", {}))
    assert layer.scaling["lora_0"] == pytest.approx(0.5 * layer.lora_alpha["lora_0"] / layer.r["lora_0"])
