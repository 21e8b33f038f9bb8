"""Loading the official checkpoints (latentsync.loaders): key coverage, exact numerics against the official math
(the independent reference in official_reference.py), Hub-id loading and ``latentsync convert``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from official_reference import (
    OfficialUNetReference,
    meta_state_dict,
    official_unet_shapes,
    openai_encoder_states,
    openai_whisper_checkpoint,
    random_state_dict,
    sinusoid_table,
)

from latentsync.loaders import (
    OfficialCheckpointError,
    convert_unet_state_dict,
    convert_whisper_state_dict,
    detect_unet_layout,
    is_official_layout,
    load_official_syncnet,
    load_official_unet,
    load_official_whisper,
)

# key lists generated from the official code (one file per U-Net layout); tests that need them skip when absent
REFERENCE_DIR = Path(
    os.environ.get("LATENTSYNC_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference")
)
LAYOUTS = ("stage1", "stage2", "stage2_efficient")
MOTION = {"stage1": "none", "stage2": "all", "stage2_efficient": "decoder"}


def read_key_file(layout: str) -> dict[str, tuple[int, ...]]:
    path = REFERENCE_DIR / f"latentsync_unet_keys_{layout}.txt"
    if not path.is_file():
        pytest.skip(f"official key list {path} is not available (set LATENTSYNC_REFERENCE_DIR)")
    shapes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            shapes[key] = tuple(json.loads(shape))
    return shapes


# ============================================================================ tests: layout and key coverage


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_description_matches_official_key_lists(layout):
    """The test's own description of the official layout equals the key lists generated from the official code."""
    assert official_unet_shapes(motion=MOTION[layout]) == read_key_file(layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_size_official_keys_load_strictly(layout):
    shapes = read_key_file(layout)
    sd = meta_state_dict(shapes)
    assert detect_unet_layout(sd).layout == layout
    unet = load_official_unet({"global_step": 1, "state_dict": sd})
    cfg = unet.config
    assert cfg.motion_modules == MOTION[layout]
    assert tuple(cfg.block_out_channels) == (320, 640, 1280, 1280)
    assert (cfg.in_channels, cfg.out_channels, cfg.cross_attention_dim, cfg.layers_per_block) == (13, 4, 384, 2)
    assert cfg.motion_max_seq_length == 24 and cfg.frame_pooled_norm
    # every official learnable tensor became exactly one of our parameters (the pe tables are buffers)
    official_params = sum(math.prod(s) for k, s in shapes.items() if not k.endswith("pos_encoder.pe"))
    assert sum(p.numel() for p in unet.parameters()) == official_params
    expected_total = {"stage1": 849_962_244, "stage2": 1_267_099_844, "stage2_efficient": 1_100_244_804}[layout]
    assert official_params == expected_total


def test_full_size_v1_0_names_load():
    shapes = read_key_file("stage1")
    renamed = {}
    for k, s in shapes.items():
        k = k.replace("transformer_blocks.0.norm2.", "transformer_blocks.0.audio_cross_attn.norm.")
        k = k.replace("transformer_blocks.0.attn2.", "transformer_blocks.0.audio_cross_attn.attn.")
        renamed[k] = s
    assert sum(".audio_cross_attn." in k for k in renamed) == 16 * 7  # 16 spatial transformers x 7 tensors
    assert renamed == official_unet_shapes(motion="none", v1_0=True)
    sd = meta_state_dict(renamed)
    info = detect_unet_layout(sd)
    assert info.layout == "stage1" and info.v1_0_names
    assert load_official_unet(sd).config.motion_modules == "none"


def test_corrupted_checkpoint_names_the_offending_keys():
    shapes = read_key_file("stage2")
    sd = meta_state_dict(shapes)
    del sd["up_blocks.2.motion_modules.1.temporal_transformer.transformer_blocks.0.ff_norm.weight"]
    sd["down_blocks.1.attentions.0.transformer_blocks.0.extra_gate.weight"] = torch.empty(8, device="meta")
    sd["mid_block.resnets.1.conv2.weight"] = torch.empty(1280, 1280, 1, 1, device="meta")
    with pytest.raises(OfficialCheckpointError) as err:
        load_official_unet(sd)
    msg = str(err.value)
    assert "missing keys" in msg and "up_blocks.2.motion_modules.1.transformer_blocks.0.norm3.weight" in msg
    assert "unexpected keys" in msg and "down_blocks.1.attentions.0.transformer_blocks.0.extra_gate.weight" in msg
    assert "shape mismatches" in msg and "mid_block.resnets.1.conv2.weight" in msg


def test_motion_key_renames():
    sd = meta_state_dict(read_key_file("stage2"))
    out = convert_unet_state_dict(sd)
    p = "up_blocks.3.motion_modules.2."
    t = "temporal_transformer.transformer_blocks.0."
    for official, ours in [
        ("temporal_transformer.norm.weight", "norm.weight"),
        ("temporal_transformer.proj_in.weight", "proj_in.weight"),
        (t + "attention_blocks.0.to_q.weight", "transformer_blocks.0.attn1.to_q.weight"),
        (t + "attention_blocks.1.to_out.0.bias", "transformer_blocks.0.attn2.to_out.0.bias"),
        (t + "norms.0.weight", "transformer_blocks.0.norm1.weight"),
        (t + "norms.1.bias", "transformer_blocks.0.norm2.bias"),
        (t + "ff_norm.weight", "transformer_blocks.0.norm3.weight"),
        (t + "ff.net.2.weight", "transformer_blocks.0.ff.net.2.weight"),
    ]:
        assert p + official in sd and p + ours in out and p + official not in out
    assert len(out) == len(sd) - 20  # two pe tables per module become one shared table
    assert sum(k.endswith("pos_embed.pe") for k in out) == 20


def test_positional_table_is_checked():
    shapes = official_unet_shapes(channels=(32, 32), layers=1, cross=16, motion="decoder", pe_len=24)
    sd = random_state_dict(shapes, torch.Generator().manual_seed(0), torch.float32)
    key = "up_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    converted = convert_unet_state_dict(sd)
    table = converted["up_blocks.0.motion_modules.1.transformer_blocks.0.pos_embed.pe"]
    assert table.shape == (1, 24, 32) and torch.allclose(table.double(), sinusoid_table(24, 32), atol=1e-6)
    sd[key] = sd[key] * 1.01
    with pytest.raises(OfficialCheckpointError, match="positional table differs"):
        convert_unet_state_dict(sd)
    sd[key] = sd[key] / 1.01 + 1e-7  # still a sinusoid, but not the table of attention_blocks.0
    with pytest.raises(OfficialCheckpointError, match="the two tables of a block must match"):
        convert_unet_state_dict(sd)


def test_not_an_official_unet():
    with pytest.raises(OfficialCheckpointError, match="not an official LatentSync U-Net"):
        load_official_unet({"state_dict": {"encoder.weight": torch.zeros(2)}})


# ============================================================================ tests: numerics (float64)

SMALL = dict(channels=(32, 48, 64, 64), layers=2, cross=24)


@pytest.mark.parametrize(
    "layout,v1_0,pe_len", [("stage2", False, 24), ("stage2_efficient", False, 16), ("stage1", True, 24)]
)
def test_converted_unet_matches_official_math(layout, v1_0, pe_len):
    shapes = official_unet_shapes(motion=MOTION[layout], pe_len=pe_len, v1_0=v1_0, **SMALL)
    gen = torch.Generator().manual_seed(1)
    sd = random_state_dict(shapes, gen)
    unet = load_official_unet({"global_step": 5, "state_dict": sd}, torch_dtype=torch.float64, norm_num_groups=8)
    assert unet.config.motion_max_seq_length == pe_len and unet.config.motion_modules == MOTION[layout]
    b, f = 2, 3
    sample = torch.randn(b, 13, f, 8, 8, generator=gen, dtype=torch.float64)
    ctx = torch.randn(b * f, 50, 24, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ours = unet(sample, 421, encoder_hidden_states=ctx).sample
        ref = OfficialUNetReference(sd, groups=8, layers=2)(sample, 421, ctx)
    assert ours.shape == (b, 4, f, 8, 8)
    assert ref.abs().mean() > 0.1  # a meaningful signal, not a near-zero output
    assert (ours - ref).abs().max().item() < 1e-10

    if layout != "stage2":
        return
    # stock diffusers normalisation (per-frame ResNet norms, frame-pooled temporal norms) is measurably different
    stock = load_official_unet({"state_dict": sd}, torch_dtype=torch.float64, norm_num_groups=8,
                               frame_pooled_norm=False)
    with torch.no_grad():
        other = stock(sample, 421, encoder_hidden_states=ctx).sample
    assert (other - ref).abs().max().item() > 1e-3


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="full-size float64 forward needs a CUDA GPU")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_size_converted_unet_matches_official_math_on_gpu(layout):
    """Official sizes (320-1280 channels, 32 groups, 8 heads), 16 frames of 32 x 32 latents, float64."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    sd = random_state_dict(official_unet_shapes(motion=MOTION[layout]), gen)
    unet = load_official_unet({"state_dict": sd}, torch_dtype=torch.float64)
    sample = torch.randn(1, 13, 16, 32, 32, generator=gen, device="cuda", dtype=torch.float64)
    ctx = torch.randn(16, 50, 384, generator=gen, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        ours = unet(sample, 501, encoder_hidden_states=ctx).sample
        ref = OfficialUNetReference(sd)(sample, 501, ctx)
    assert ref.abs().mean() > 0.1
    assert (ours - ref).abs().max().item() < 1e-10

WHISPER_DIMS = dict(n_mels=16, n_vocab=100, n_audio_ctx=20, n_audio_state=32, n_audio_head=4, n_audio_layer=3,
                    n_text_ctx=8, n_text_state=32, n_text_head=4, n_text_layer=1)


def test_whisper_conversion_matches_openai_encoder(tmp_path):
    gen = torch.Generator().manual_seed(2)
    ckpt = openai_whisper_checkpoint(gen, WHISPER_DIMS)
    path = tmp_path / "tiny.pt"
    torch.save(ckpt, path)
    encoder = load_official_whisper(path, torch_dtype=torch.float64)
    assert encoder.config.d_model == 32 and encoder.config.encoder_layers == 3 and encoder.config.num_mel_bins == 16
    mel = torch.randn(2, 16, 40, generator=gen, dtype=torch.float64)
    ours = encoder.hidden_state_stack(mel)
    ref = openai_encoder_states(ckpt["model_state_dict"], mel, heads=4, layers=3)
    assert ours.shape == (2, 20, 4, 32)
    assert (ours - ref).abs().max().item() < 1e-10
    names = convert_whisper_state_dict(ckpt["model_state_dict"])
    assert {"embed_positions.weight", "layers.2.self_attn.k_proj.weight", "layers.0.fc2.bias",
            "layers.1.final_layer_norm.weight", "layer_norm.weight"} <= set(names)
    assert not any(k.startswith("decoder") for k in names)


def test_whisper_conversion_rejects_unknown_keys():
    ckpt = openai_whisper_checkpoint(torch.Generator().manual_seed(3), WHISPER_DIMS, torch.float32)
    ckpt["model_state_dict"]["encoder.blocks.0.attn.rotary.weight"] = torch.zeros(4)
    with pytest.raises(OfficialCheckpointError, match="encoder.blocks.0.attn.rotary.weight"):
        load_official_whisper(ckpt)
    with pytest.raises(OfficialCheckpointError, match="not an openai-whisper checkpoint"):
        load_official_whisper({"state_dict": {}})


# ============================================================================ tests: SyncNet


def test_official_syncnet_keys_load_strictly():
    StableSyncNet = pytest.importorskip("latentsync.models.syncnet").StableSyncNet

    with torch.device("meta"):
        keys = StableSyncNet.from_preset("16_pixel_attn").state_dict()
    sd = {k: torch.empty(v.shape, device="meta") for k, v in keys.items()}
    # names of the released stable_syncnet.pt (the official module names)
    for name in ["audio_encoder.conv_in.weight", "audio_encoder.down_blocks.4.attn.to_q.weight",
                 "audio_encoder.down_blocks.4.ff.net.0.proj.weight", "audio_encoder.down_blocks.4.conv_out.weight",
                 "audio_encoder.down_blocks.1.downsample_conv.weight", "visual_encoder.down_blocks.9.conv2.weight",
                 "visual_encoder.norm_out.weight"]:
        assert name in sd, name
    assert len(sd) == 266
    model = load_official_syncnet({"state_dict": sd, "global_step": 3, "train_loss_list": []})
    assert list(model.config.visual_attn_blocks) == [0, 0, 0, 0, 1, 1, 0, 0]
    assert sum(p.numel() for p in model.parameters()) == 401_306_080
    del sd["visual_encoder.norm_out.bias"]
    with pytest.raises(OfficialCheckpointError, match="visual_encoder.norm_out.bias"):
        load_official_syncnet({"state_dict": sd})


# ============================================================================ tests: files, Hub cache, CLI

FAKE_UNET = dict(channels=(32, 32, 64, 64), layers=2, cross=48, motion="all")  # 32 groups and 8 heads fit
FAKE_WHISPER = dict(n_mels=80, n_vocab=50, n_audio_ctx=1500, n_audio_state=48, n_audio_head=4, n_audio_layer=2,
                    n_text_ctx=8, n_text_state=48, n_text_head=4, n_text_layer=1)


def write_official_release(folder: Path, seed: int = 0) -> None:
    """Files of an official release, scaled down: latentsync_unet.pt and whisper/tiny.pt (fp16, as openai's)."""
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sd = random_state_dict(official_unet_shapes(**FAKE_UNET), gen, torch.float32)
    torch.save({"global_step": 123, "state_dict": sd}, folder / "latentsync_unet.pt")
    (folder / "whisper").mkdir(exist_ok=True)
    torch.save(openai_whisper_checkpoint(gen, FAKE_WHISPER, torch.float16), folder / "whisper" / "tiny.pt")


def write_tiny_vae(folder: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                  scaling_factor=0.5).save_pretrained(folder)


def fill_hub_cache(cache: Path, repo_id: str, files_from: Path) -> None:
    """Lay out ``files_from`` as a cached snapshot of ``repo_id`` (what hf_hub_download leaves behind)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for src in files_from.rglob("*"):
        if src.is_file():
            dst = snapshot / src.relative_to(files_from)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())


HUB_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    from latentsync import LatentSyncPipeline
    from latentsync.commands import main

    out_dir, result_path = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    sample = torch.randn(1, 13, 3, 8, 8)
    ctx = torch.randn(3, 50, 48)
    mel = torch.randn(1, 80, 200)

    def outputs(pipe):
        with torch.no_grad():
            return (pipe.unet(sample, 500, encoder_hidden_states=ctx).sample,
                    pipe.audio_encoder.hidden_state_stack(mel))

    pipe = LatentSyncPipeline.from_pretrained("ByteDance/LatentSync-1.6")
    u1, a1 = outputs(pipe)
    rc = main(["convert", "--official", "ByteDance/LatentSync-1.6", "--output", out_dir])
    saved = LatentSyncPipeline.from_pretrained(out_dir)
    u2, a2 = outputs(saved)
    json.dump({
        "rc": rc,
        "resolution": [pipe.config.resolution, saved.config.resolution],
        "motion": saved.unet.config.motion_modules,
        "frame_pooled_norm": saved.unet.config.frame_pooled_norm,
        "vae_scaling": [pipe.vae.config.scaling_factor, saved.vae.config.scaling_factor],
        "vae_channels": list(saved.vae.config.block_out_channels),
        "scheduler": [type(saved.scheduler).__name__, saved.scheduler.config.steps_offset,
                      saved.scheduler.config.beta_schedule],
        "unet_equal": bool(torch.equal(u1, u2)),
        "audio_equal": bool(torch.equal(a1, a2)),
        "unet_abs": float(u1.abs().mean()),
        "dtype": str(saved.unet.dtype),
    }, open(result_path, "w"))
    """
)


def test_hub_id_loads_official_layout_offline_and_convert_roundtrip(tmp_path):
    release, vae = tmp_path / "release", tmp_path / "vae"
    write_official_release(release)
    write_tiny_vae(vae)
    cache = tmp_path / "hub"
    fill_hub_cache(cache, "ByteDance/LatentSync-1.6", release)
    fill_hub_cache(cache, "stabilityai/sd-vae-ft-mse", vae)
    script = tmp_path / "run.py"
    script.write_text(HUB_SCRIPT)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    out, result = tmp_path / "converted", tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(script), str(out), str(result)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(result.read_text())
    assert r["rc"] == 0
    assert r["resolution"] == [512, 512]  # LatentSync 1.6 works on 512 x 512 faces
    assert r["motion"] == "all" and r["frame_pooled_norm"] is True
    assert r["vae_scaling"] == [0.18215, 0.18215] and r["vae_channels"] == [8, 16]  # the cached VAE, official scaling
    assert r["scheduler"] == ["DDIMScheduler", 1, "scaled_linear"]
    assert r["unet_equal"] and r["audio_equal"] and r["unet_abs"] > 0.01
    assert r["dtype"] == "torch.float32"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert "model_index.json" in files
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "audio_encoder/model.safetensors"} <= files
    assert not any(f.endswith((".pt", ".bin", ".pth")) for f in files)


def test_local_official_folder(tmp_path, monkeypatch):
    from latentsync import LatentSyncPipeline
    from latentsync.commands import main

    release, vae = tmp_path / "checkpoints", tmp_path / "vae"
    write_official_release(release, seed=4)
    write_tiny_vae(vae)
    assert is_official_layout(release) and not is_official_layout(vae)
    pipe = LatentSyncPipeline.from_pretrained(release, vae_id=str(vae), resolution=512, torch_dtype=torch.float16)
    assert pipe.config.resolution == 512 and pipe.unet.dtype == torch.float16
    assert pipe.audio_encoder.dtype == torch.float16 and pipe.vae.dtype == torch.float16
    pipe = LatentSyncPipeline.from_pretrained(release, vae_id=str(vae), dtype=torch.bfloat16)  # diffusers' new name
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.audio_encoder.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="low_cpu_mem_usage_typo"):
        LatentSyncPipeline.from_pretrained(release, vae_id=str(vae), low_cpu_mem_usage_typo=True)
    (release / "whisper" / "tiny.pt").rename(tmp_path / "moved.pt")
    with pytest.raises(OfficialCheckpointError, match="whisper/tiny.pt"):
        LatentSyncPipeline.from_pretrained(release, vae_id=str(vae))
    (tmp_path / "moved.pt").rename(release / "whisper" / "tiny.pt")

    # latentsync convert ... --push-to-hub: the folder that is uploaded is the converted one
    calls = []
    import huggingface_hub

    def create_repo(self, repo_id, **kw):
        calls.append(("create", repo_id, kw))
        return SimpleNamespace(repo_id=repo_id)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    out = tmp_path / "converted"
    assert main(["convert", "--official", str(release), "--output", str(out), "--vae", str(vae),
                 "--push-to-hub", "me/latentsync-converted", "--private"]) == 0
    assert calls[0][:2] == ("create", "me/latentsync-converted")
    assert calls[0][2]["private"] is True and calls[0][2]["exist_ok"] is True
    assert calls[1][1]["repo_id"] == "me/latentsync-converted" and calls[1][1]["folder_path"] == str(out)
    saved = LatentSyncPipeline.from_pretrained(out)
    assert saved.config.resolution == 256  # unknown local release: the 1.0/1.5 default
    assert not is_official_layout(out)

    # --syncnet converts stable_syncnet.pt too (a scaled-down architecture registered as a preset for the test)
    syncnet_module = pytest.importorskip("latentsync.models.syncnet")

    tiny = dict(audio_in_channels=1, audio_block_out_channels=[8, 16], audio_downsample_factors=[[2, 1], 2],
                audio_attn_blocks=[0, 1], visual_in_channels=6, visual_block_out_channels=[8, 16],
                visual_downsample_factors=[[1, 2], 2], visual_attn_blocks=[1, 0], norm_num_groups=4, num_frames=2)
    monkeypatch.setitem(syncnet_module.SYNCNET_CONFIGS, "tiny_test", tiny)
    torch.manual_seed(5)
    original = syncnet_module.StableSyncNet(**tiny).eval()
    torch.save({"state_dict": original.state_dict(), "global_step": 7, "train_loss_list": [0.5]},
               release / "stable_syncnet.pt")
    out2 = tmp_path / "converted2"
    assert main(["convert", "--official", str(release), "--output", str(out2), "--vae", str(vae), "--syncnet"]) == 0
    assert (out2 / "syncnet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = syncnet_module.StableSyncNet.from_pretrained(out2 / "syncnet").eval()
    frames, mel = torch.randn(2, 6, 16, 32), torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.visual_encoder(frames), original.visual_encoder(frames))
        assert torch.equal(loaded.audio_encoder(mel), original.audio_encoder(mel))

    # a bad official folder gives a clean CLI error
    assert main(["convert", "--official", str(tmp_path / "vae"), "--output", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()  # nothing half written


def test_convert_never_writes_into_or_over_the_release(tmp_path, caplog):
    """The release is only read: ``--output`` may not be the release folder, inside it or hold it (it used to be
    written into the release); an existing output is replaced only with ``--overwrite``, as a whole."""
    from latentsync.commands import main

    release, vae = tmp_path / "checkpoints", tmp_path / "vae"
    write_official_release(release, seed=4)
    write_tiny_vae(vae)
    before = sorted(p.name for p in release.rglob("*"))
    base = ["convert", "--official", str(release), "--vae", str(vae), "--resolution", "256"]
    for output, message in [(release, "is inside the input"), (release / "diffusers", "is inside the input"),
                            (tmp_path, "holds the input")]:
        caplog.clear()
        assert main([*base, "--output", str(output), "--overwrite"]) == 2
        assert message in caplog.text, caplog.text
    assert sorted(p.name for p in release.rglob("*")) == before
    out = tmp_path / "converted"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    caplog.clear()
    assert main([*base, "--output", str(out)]) == 2 and "already exists" in caplog.text
    assert main([*base, "--output", str(out), "--overwrite"]) == 0
    assert (out / "model_index.json").is_file() and not (out / "notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


# ============================================================================ tests: files that are not what they seem

LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 5068113604\n")


def test_unreadable_release_files_say_what_they_hold(tmp_path):
    """A Git LFS pointer (a clone without git-lfs), a saved error page, an empty or truncated download, or a pickle
    with objects besides tensors: one line naming the file and what it is (it used to be torch's advice to retry with
    weights_only=False, or an empty message)."""
    from latentsync.loaders.official import load_official_checkpoint

    release = tmp_path / "release"
    write_official_release(release)
    good = (release / "latentsync_unet.pt").read_bytes()
    cases = {
        "lfs.pt": (LFS_POINTER.encode(), "Git LFS pointer"),
        "page.pt": (b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "web page"),
        "empty.pt": (b"", "is empty"),
        "half.pt": (good[: len(good) // 2], "is incomplete"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OfficialCheckpointError, match=message) as info:
            load_official_checkpoint(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value) and "weights_only` set to `False" not in str(
            info.value)
    torch.save({"state_dict": {"a": torch.zeros(1)}, "args": SimpleNamespace(lr=1)}, tmp_path / "objects.pt")
    with pytest.raises(OfficialCheckpointError, match="holds more than tensors .*SimpleNamespace") as info:
        load_official_checkpoint(tmp_path / "objects.pt")
    assert "\n" not in str(info.value)
    (release / "whisper" / "tiny.pt").write_text(LFS_POINTER)
    with pytest.raises(OfficialCheckpointError, match=r"whisper[/\\]tiny.pt: it is a Git LFS pointer"):
        load_official_whisper(release / "whisper" / "tiny.pt")


def test_wrong_release_file_names_what_it_holds(tmp_path):
    """The SyncNet, the Whisper file or a LoRA given as the U-Net (and the U-Net as the Whisper file): the error
    names the file and what it holds (it used to list key names without the file)."""
    from safetensors.torch import save_file

    release = tmp_path / "release"
    write_official_release(release)
    syncnet_module = pytest.importorskip("latentsync.models.syncnet")
    torch.save({"state_dict": syncnet_module.StableSyncNet.from_preset("16_pixel_attn").state_dict()},
               tmp_path / "syncnet.pt")
    save_file({"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32)},
              str(tmp_path / "lora.safetensors"))
    for path, message in [(tmp_path / "syncnet.pt", "syncnet.pt: it holds a StableSyncNet"),
                          (tmp_path / "lora.safetensors", "lora.safetensors: it holds LoRA"),
                          (release / "whisper" / "tiny.pt", "tiny.pt: .*it holds an openai-whisper checkpoint")]:
        with pytest.raises(OfficialCheckpointError, match=message):
            load_official_unet(path)
    with pytest.raises(OfficialCheckpointError, match="latentsync_unet.pt: not an openai-whisper .*it holds a U-Net"):
        load_official_whisper(release / "latentsync_unet.pt")


def test_rewrapped_unet_loads_and_stage1_warns(tmp_path, caplog):
    """The U-Net saved as ``{"model": ...}`` or as safetensors loads the same tensors; a stage-1 U-Net (no temporal
    layers) in a release folder, where the releases have a stage-2 one, loads for inference with a warning (it loaded
    silently); loaded alone (as stage-2 training does) it is not warned about."""
    from latentsync.loaders import load_official_components

    from safetensors.torch import save_file

    release = tmp_path / "release"
    write_official_release(release)
    sd = torch.load(release / "latentsync_unet.pt", weights_only=True)["state_dict"]
    reference = load_official_unet(release / "latentsync_unet.pt").state_dict()
    torch.save({"model": sd, "epoch": 3}, tmp_path / "model.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "unet.safetensors"))
    for path in (tmp_path / "model.pth", tmp_path / "unet.safetensors"):
        loaded = load_official_unet(path).state_dict()
        assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)
    assert "stage-1" not in caplog.text
    stage1 = random_state_dict(official_unet_shapes(**dict(FAKE_UNET, motion="none")), torch.Generator(), torch.float32)
    torch.save({"state_dict": stage1}, release / "latentsync_unet.pt")
    assert load_official_unet(release / "latentsync_unet.pt").config.motion_modules == "none"
    assert "stage-1" not in caplog.text
    write_tiny_vae(tmp_path / "vae")
    assert load_official_components(release, vae_id=str(tmp_path / "vae"))["unet"].config.motion_modules == "none"
    assert "latentsync_unet.pt is a stage-1 U-Net" in caplog.text


def test_convert_problems_are_one_line(tmp_path, caplog, monkeypatch):
    """``latentsync convert``: the U-Net file given as --official, a resolution the models cannot use, a Whisper of
    another size, a VAE folder without a model, and a full disk while writing: exit status 2, one line, no output
    folder (they were tracebacks, a message without the files, or a converted folder that fails at run time)."""
    import errno

    from latentsync import LatentSyncPipeline
    from latentsync.commands import main

    release, vae = tmp_path / "release", tmp_path / "vae"
    write_official_release(release)
    write_tiny_vae(vae)
    out = tmp_path / "out"
    base = ["convert", "--output", str(out), "--vae", str(vae)]

    def fails(args, message):
        caplog.clear()
        assert main(args) == 2
        assert message in caplog.text, caplog.text
        assert "Traceback" not in caplog.text and not out.exists()

    fails([*base, "--official", str(release / "latentsync_unet.pt")], "latentsync_unet.pt is a file: give the folder")
    for resolution in ("0", "100"):  # the tiny VAE and U-Net need a multiple of 16 (the official ones 64)
        fails([*base, "--official", str(release), "--resolution", resolution],
              f"resolution {resolution} is not a positive multiple of 16")
    (tmp_path / "novae").mkdir()
    fails(["convert", "--output", str(out), "--vae", str(tmp_path / "novae"), "--official", str(release)],
          "cannot load vae_id=")

    def full_disk(self, folder, **kw):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "part").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(LatentSyncPipeline, "save_pretrained", full_disk)
        fails([*base, "--official", str(release)], f"cannot write {out}: [Errno 28] No space left on device")
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    dims = dict(FAKE_WHISPER, n_audio_state=64, n_text_state=64)
    torch.save(openai_whisper_checkpoint(torch.Generator(), dims, torch.float16), release / "whisper" / "tiny.pt")
    fails([*base, "--official", str(release)], "latentsync_unet.pt expects 48-wide Whisper features, but ")


def test_release_folder_with_other_file_names_lists_them(tmp_path):
    """A release folder whose files were renamed by a mirror, or with a transformers Whisper folder: the error lists
    the weight files it holds (it said only which official file was missing)."""
    from latentsync.loaders.official import resolve_official_files

    release = tmp_path / "release"
    write_official_release(release)
    (release / "latentsync_unet.pt").rename(release / "latentsync_unet_v1.6.ckpt")
    (release / "whisper" / "tiny.pt").rename(release / "whisper" / "whisper_tiny.pt")
    with pytest.raises(OfficialCheckpointError, match=r"lacks the official file latentsync_unet.pt \(it holds "
                                                      r"latentsync_unet_v1.6.ckpt, whisper/whisper_tiny.pt\)"):
        resolve_official_files(release)
    (release / "latentsync_unet_v1.6.ckpt").rename(release / "latentsync_unet.pt")
    (release / "whisper" / "config.json").write_text("{}")  # a transformers Whisper folder instead of openai's file
    with pytest.raises(OfficialCheckpointError, match="tiny.pt .*whisper/ is a transformers Whisper folder"):
        resolve_official_files(release)


def test_resolution_other_than_the_release_warns(caplog):
    """LatentSync 1.5 (256 px) at resolution 512, or 1.6 (512 px) at 256: loaded as asked, with a warning (it was
    silent); the release's own resolution, or a resolution for an unknown local folder, is not warned about."""
    from latentsync.loaders import official_resolution

    assert official_resolution("ByteDance/LatentSync-1.5", 512) == 512
    assert "ByteDance/LatentSync-1.5 was trained on 256 px faces: resolution 512" in caplog.text
    caplog.clear()
    assert official_resolution("ByteDance/LatentSync-1.6", 256) == 256 and "trained on 512 px" in caplog.text
    caplog.clear()
    assert official_resolution("ByteDance/LatentSync-1.6", 512) == 512 and official_resolution("/some/folder", 512) == 512
    assert official_resolution("ByteDance/LatentSync-1.6") == 512 and not caplog.text


# ============================================================================ tests: weights that load but cannot work


def test_nonfinite_weights_are_refused(tmp_path, caplog, monkeypatch):
    """A U-Net, Whisper or SyncNet file with NaN or infinite values (a damaged download, a diverged run): one line
    naming the file, the first bad key and how many (it loaded silently and gave black frames; a NaN in a positional
    table said the table "differs from" itself). NaN only in Whisper's unused text decoder: loaded, with a warning."""
    from latentsync.commands import main

    release, vae = tmp_path / "release", tmp_path / "vae"
    write_official_release(release)
    write_tiny_vae(vae)
    unet_file, whisper_file = release / "latentsync_unet.pt", release / "whisper" / "tiny.pt"
    original = torch.load(unet_file, weights_only=True)
    for dtype in (torch.float32, torch.float16):
        sd = {k: v.to(dtype, copy=True) for k, v in original["state_dict"].items()}
        sd["conv_in.weight"][0, 0, 0, :2] = float("nan")
        sd["up_blocks.1.resnets.0.conv1.bias"][3] = float("inf")
        torch.save({"state_dict": sd}, unet_file)
        with pytest.raises(OfficialCheckpointError) as info:
            load_official_unet(unet_file)
        assert str(info.value).startswith(f"{unet_file}: 2 tensors hold NaN or infinite values (first: "
                                          "conv_in.weight, 2 of ") and "\n" not in str(info.value)
    sd = dict(original["state_dict"])
    pe = next(k for k in sd if k.endswith("pos_encoder.pe"))
    sd[pe] = sd[pe].clone()
    sd[pe][0, 1, 1] = float("nan")
    torch.save({"state_dict": sd}, unet_file)
    with pytest.raises(OfficialCheckpointError, match=f"1 tensor holds NaN .*first: {pe}, 1 of"):
        load_official_unet(unet_file)
    caplog.clear()
    out = tmp_path / "out"
    assert main(["convert", "--official", str(release), "--output", str(out), "--vae", str(vae)]) == 2
    assert "1 tensor holds NaN or infinite values" in caplog.text and not out.exists()
    torch.save(original, unet_file)

    whisper = torch.load(whisper_file, weights_only=True)
    whisper["model_state_dict"]["decoder.token_embedding.weight"][0, 0] = float("nan")
    torch.save(whisper, whisper_file)
    caplog.clear()
    load_official_whisper(whisper_file)
    assert "1 tensor holds NaN or infinite values (first: decoder.token_embedding.weight" in caplog.text
    assert "in weights LatentSync does not use" in caplog.text
    whisper["model_state_dict"]["encoder.blocks.0.mlp.0.weight"][1] = float("-inf")
    torch.save(whisper, whisper_file)
    with pytest.raises(OfficialCheckpointError, match=r"tiny.pt: 1 tensor holds NaN or infinite values \(first: "
                                                      r"encoder.blocks.0.mlp.0.weight, 48 of 9216 values\)"):
        load_official_whisper(whisper_file)

    syncnet_module = pytest.importorskip("latentsync.models.syncnet")
    tiny = dict(audio_in_channels=1, audio_block_out_channels=[8, 16], audio_downsample_factors=[[2, 1], 2],
                audio_attn_blocks=[0, 1], visual_in_channels=6, visual_block_out_channels=[8, 16],
                visual_downsample_factors=[[1, 2], 2], visual_attn_blocks=[1, 0], norm_num_groups=4, num_frames=2)
    monkeypatch.setitem(syncnet_module.SYNCNET_CONFIGS, "tiny_test", tiny)
    sd = syncnet_module.StableSyncNet(**tiny).state_dict()
    key = next(iter(sd))
    sd[key][0] = float("nan")
    torch.save({"state_dict": sd}, tmp_path / "stable_syncnet.pt")
    with pytest.raises(OfficialCheckpointError, match=f"stable_syncnet.pt: 1 tensor holds NaN .*first: {key}"):
        load_official_syncnet(tmp_path / "stable_syncnet.pt")


def test_weights_beyond_float16_range_are_refused_in_float16(tmp_path):
    """A finite float32 weight above 65504 becomes infinite when the U-Net is loaded (or converted) in float16: one
    line naming the file and the weight, advising bfloat16 or float32 (it loaded and gave black frames); bfloat16
    loads it."""
    release = tmp_path / "release"
    write_official_release(release)
    unet_file = release / "latentsync_unet.pt"
    checkpoint = torch.load(unet_file, weights_only=True)
    checkpoint["state_dict"]["conv_in.weight"][0, 0, 0, 0] = 1e5
    torch.save(checkpoint, unet_file)
    assert load_official_unet(unet_file).conv_in.weight[0, 0, 0, 0] == 1e5
    with pytest.raises(OfficialCheckpointError, match=r"latentsync_unet.pt: 1 tensor\(s\) hold weights beyond "
                                                      r"float16's range \(65504; first: conv_in.weight\).*bfloat16"):
        load_official_unet(unet_file, torch_dtype=torch.float16)
    unet = load_official_unet(unet_file, torch_dtype=torch.bfloat16)
    assert unet.dtype == torch.bfloat16 and torch.isfinite(unet.conv_in.weight).all()


def test_english_only_whisper_is_refused(tmp_path, caplog):
    """Whisper tiny.en as whisper/tiny.pt (same encoder shapes as tiny, other weights): refused in one line naming
    the file (it loaded silently and gave features the U-Net was not trained on); the multilingual one loads."""
    from latentsync.commands import main
    from latentsync.loaders import load_official_components

    release, vae = tmp_path / "release", tmp_path / "vae"
    write_official_release(release)
    write_tiny_vae(vae)
    whisper_file = release / "whisper" / "tiny.pt"
    for n_vocab in (51865, 51864):
        dims = dict(FAKE_WHISPER, n_vocab=n_vocab)
        torch.save(openai_whisper_checkpoint(torch.Generator(), dims, torch.float16), whisper_file)
        if n_vocab == 51865:
            assert load_official_components(release, vae_id=str(vae))["audio_encoder"].config.vocab_size == 51865
    with pytest.raises(OfficialCheckpointError, match=r"tiny.pt is an English-only Whisper \(like tiny.en"):
        load_official_components(release, vae_id=str(vae))
    caplog.clear()
    out = tmp_path / "out"
    assert main(["convert", "--official", str(release), "--output", str(out), "--vae", str(vae)]) == 2
    assert "is an English-only Whisper" in caplog.text and not out.exists()
    forced = load_official_whisper(whisper_file)  # given explicitly, it is the user's choice
    assert load_official_components(release, vae_id=str(vae), audio_encoder=forced)["audio_encoder"] is forced


def test_local_copy_of_a_release_gets_its_resolution(tmp_path, caplog):
    """A folder that is a Hub cache snapshot of LatentSync 1.5 / 1.6 (what snapshot_download returns), links into
    one, or is a git clone of the Hub repo: resolution as for the Hub id (1.6 was loaded at 256 px with a warning to
    pass 512; 1.5 at 512 px was not warned about). A plain folder is not guessed at (no false alarm)."""
    from latentsync import loaders
    from latentsync.loaders import official_resolution

    files = tmp_path / "files"
    (files / "whisper").mkdir(parents=True)
    (files / "latentsync_unet.pt").write_bytes(b"weights")
    (files / "whisper" / "tiny.pt").write_bytes(b"whisper")
    cache = tmp_path / "hub"
    for repo in ("ByteDance/LatentSync-1.5", "ByteDance/LatentSync-1.6", "me/LatentSync-1.6-finetuned"):
        fill_hub_cache(cache, repo, files)
    snapshot = {repo: next((cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
                for repo in ("ByteDance/LatentSync-1.5", "ByteDance/LatentSync-1.6", "me/LatentSync-1.6-finetuned")}
    assert official_resolution(snapshot["ByteDance/LatentSync-1.6"]) == 512 and "unknown" not in caplog.text
    caplog.clear()
    assert official_resolution(snapshot["ByteDance/LatentSync-1.5"], 512) == 512
    assert f"{snapshot['ByteDance/LatentSync-1.5']} holds ByteDance/LatentSync-1.5, which was trained on 256 px" \
        in caplog.text
    official_release_of = loaders.official_release_of
    assert official_release_of(snapshot["ByteDance/LatentSync-1.5"]) == "ByteDance/LatentSync-1.5"
    linked = tmp_path / "checkpoints"
    (linked / "whisper").mkdir(parents=True)
    (linked / "latentsync_unet.pt").symlink_to(snapshot["ByteDance/LatentSync-1.6"] / "latentsync_unet.pt")
    assert official_release_of(linked) == "ByteDance/LatentSync-1.6"
    clone = tmp_path / "LatentSync-1.5"
    (clone / ".git").mkdir(parents=True)
    (clone / ".git" / "config").write_text('[remote "origin"]\n\turl = https://huggingface.co/ByteDance/LatentSync-1.5'
                                           '\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n')
    assert official_release_of(clone) == "ByteDance/LatentSync-1.5"
    caplog.clear()
    for folder in (files, snapshot["me/LatentSync-1.6-finetuned"], tmp_path / "nothing"):
        assert official_release_of(folder) is None
        assert official_resolution(folder, 512) == 512 and not caplog.text


def test_local_dir_download_and_plain_copy_get_their_resolution(tmp_path, caplog):
    """The folder the official instructions fill (`hf download ByteDance/LatentSync-1.6 latentsync_unet.pt
    --local-dir checkpoints`) and a plain copy of the released file: 1.6 gets 512 px (it got 256 with a warning, and
    1.6 at 256 px gives blurred mouths; 1.5 at 512 px gives noise). The download record's SHA-256 decides when it is
    there and current; otherwise the released file's exact size (sparse files here)."""
    import time

    from latentsync.loaders import official_release_of, official_resolution
    from latentsync.loaders.official import OFFICIAL_UNET_FILES

    def folder(name, size, etag=None, stale=False):
        path = tmp_path / name
        (path / "whisper").mkdir(parents=True)
        with open(path / "latentsync_unet.pt", "wb") as fh:
            fh.truncate(size)
        if etag is not None:
            record = path / ".cache" / "huggingface" / "download" / "latentsync_unet.pt.metadata"
            record.parent.mkdir(parents=True)
            written = time.time() - (100 if stale else -5)
            record.write_text(f"{'c' * 40}\n{etag}\n{written}\n")
        return path

    (size15, sha15), (size16, sha16) = (OFFICIAL_UNET_FILES[r] for r in ("ByteDance/LatentSync-1.5",
                                                                        "ByteDance/LatentSync-1.6"))
    assert size15 != size16
    copy16 = folder("copy16", size16)
    assert official_release_of(copy16) == "ByteDance/LatentSync-1.6"
    caplog.clear()
    assert official_resolution(copy16) == 512 and "unknown" not in caplog.text
    assert official_release_of(folder("copy15", size15)) == "ByteDance/LatentSync-1.5"
    assert official_resolution(folder("copy15b", size15), 512) == 512 and "trained on 256 px" in caplog.text
    assert official_release_of(folder("local_dir16", 10, etag=sha16)) == "ByteDance/LatentSync-1.6"
    assert official_release_of(folder("local_dir15", 10, etag=sha15)) == "ByteDance/LatentSync-1.5"
    # a download of another repo whose file happens to have a release's size: its record says it is not that file
    assert official_release_of(folder("finetune", size16, etag="e" * 64)) is None
    # a record older than the file (the file was replaced after the download): the size decides
    assert official_release_of(folder("replaced", size15, etag=sha16, stale=True)) == "ByteDance/LatentSync-1.5"
    assert official_release_of(folder("other", size16 + 1)) is None


def test_whole_model_pickles_and_wrapped_keys(tmp_path):
    """A whole model saved with torch.save(model): the error names the class and says to save the state dict (it
    quoted torch's unpickler); a state dict saved from a torch.compile'd model (``_orig_mod.`` keys) loads."""
    from latentsync.loaders.official import load_official_checkpoint

    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    with pytest.raises(OfficialCheckpointError, match=r"whole.pt: it holds more than tensors \(a pickled "
                                                      r"torch.nn.modules.linear.Linear\).*model.state_dict\(\)"):
        load_official_checkpoint(tmp_path / "whole.pt")
    release = tmp_path / "release"
    write_official_release(release)
    sd = torch.load(release / "latentsync_unet.pt", weights_only=True)["state_dict"]
    torch.save({"state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}}, tmp_path / "compiled.pt")
    reference = load_official_unet(release / "latentsync_unet.pt").state_dict()
    loaded = load_official_unet(tmp_path / "compiled.pt").state_dict()
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)
