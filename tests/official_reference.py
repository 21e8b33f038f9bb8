"""Independent re-implementations of the official LatentSync code, for the parity tests.

Written from the official definitions in plain tensor operations, reading the *official* key names, and sharing no
code with latentsync's models and pipeline: the official checkpoint layouts (U-Net key shapes, openai-whisper
checkpoints), the official U-Net forward (frame-pooled ResNet GroupNorms, per-frame temporal GroupNorms) and Whisper
encoder, the official mouth mask recipe, and one video window drawn and denoised as the official pipeline does it.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F


# ============================================================================ official checkpoint layouts


def sinusoid_table(length: int, channels: int, dtype=torch.float64) -> torch.Tensor:
    """Official PositionalEncoding buffer: sin on even, cos on odd channels, base 10000."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, channels, 2, dtype=torch.float64) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, length, channels, dtype=torch.float64)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe.to(dtype)


def official_unet_shapes(channels=(320, 640, 1280, 1280), layers=2, in_ch=13, out_ch=4, cross=384, motion="all",
                         pe_len=24, v1_0=False) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official UNet3DConditionModel (AnimateDiff lineage) for these sizes."""
    s: dict[str, tuple[int, ...]] = {}
    temb = 4 * channels[0]

    def resnet(p, cin, cout):
        s.update({f"{p}.norm1.weight": (cin,), f"{p}.norm1.bias": (cin,), f"{p}.conv1.weight": (cout, cin, 3, 3),
                  f"{p}.conv1.bias": (cout,), f"{p}.time_emb_proj.weight": (cout, temb),
                  f"{p}.time_emb_proj.bias": (cout,),
                  f"{p}.norm2.weight": (cout,), f"{p}.norm2.bias": (cout,), f"{p}.conv2.weight": (cout, cout, 3, 3),
                  f"{p}.conv2.bias": (cout,)})
        if cin != cout:
            s.update({f"{p}.conv_shortcut.weight": (cout, cin, 1, 1), f"{p}.conv_shortcut.bias": (cout,)})

    def attention(p, c, kv):
        s.update({f"{p}.to_q.weight": (c, c), f"{p}.to_k.weight": (c, kv), f"{p}.to_v.weight": (c, kv),
                  f"{p}.to_out.0.weight": (c, c), f"{p}.to_out.0.bias": (c,)})

    def norm(p, c):
        s.update({f"{p}.weight": (c,), f"{p}.bias": (c,)})

    def ff(p, c):
        s.update({f"{p}.net.0.proj.weight": (8 * c, c), f"{p}.net.0.proj.bias": (8 * c,),
                  f"{p}.net.2.weight": (c, 4 * c), f"{p}.net.2.bias": (c,)})

    def transformer(p, c):
        norm(f"{p}.norm", c)
        s.update({f"{p}.proj_in.weight": (c, c, 1, 1), f"{p}.proj_in.bias": (c,)})
        b = f"{p}.transformer_blocks.0"
        norm(f"{b}.norm1", c)
        attention(f"{b}.attn1", c, c)
        if v1_0:
            norm(f"{b}.audio_cross_attn.norm", c)
            attention(f"{b}.audio_cross_attn.attn", c, cross)
        else:
            norm(f"{b}.norm2", c)
            attention(f"{b}.attn2", c, cross)
        ff(f"{b}.ff", c)
        norm(f"{b}.norm3", c)
        s.update({f"{p}.proj_out.weight": (c, c, 1, 1), f"{p}.proj_out.bias": (c,)})

    def motion_module(p, c):
        p = f"{p}.temporal_transformer"
        norm(f"{p}.norm", c)
        s.update({f"{p}.proj_in.weight": (c, c), f"{p}.proj_in.bias": (c,)})
        b = f"{p}.transformer_blocks.0"
        for i in (0, 1):
            attention(f"{b}.attention_blocks.{i}", c, c)
            s[f"{b}.attention_blocks.{i}.pos_encoder.pe"] = (1, pe_len, c)
        for i in (0, 1):
            norm(f"{b}.norms.{i}", c)
        ff(f"{b}.ff", c)
        norm(f"{b}.ff_norm", c)
        s.update({f"{p}.proj_out.weight": (c, c), f"{p}.proj_out.bias": (c,)})

    n = len(channels)
    s.update({"conv_in.weight": (channels[0], in_ch, 3, 3), "conv_in.bias": (channels[0],),
              "time_embedding.linear_1.weight": (temb, channels[0]), "time_embedding.linear_1.bias": (temb,),
              "time_embedding.linear_2.weight": (temb, temb), "time_embedding.linear_2.bias": (temb,)})
    for i, c in enumerate(channels):
        cin = channels[max(i - 1, 0)]
        for j in range(layers):
            resnet(f"down_blocks.{i}.resnets.{j}", cin if j == 0 else c, c)
            if i < n - 1:
                transformer(f"down_blocks.{i}.attentions.{j}", c)
            if motion == "all":
                motion_module(f"down_blocks.{i}.motion_modules.{j}", c)
        if i < n - 1:
            s[f"down_blocks.{i}.downsamplers.0.conv.weight"] = (c, c, 3, 3)
            s[f"down_blocks.{i}.downsamplers.0.conv.bias"] = (c,)
    resnet("mid_block.resnets.0", channels[-1], channels[-1])
    transformer("mid_block.attentions.0", channels[-1])
    resnet("mid_block.resnets.1", channels[-1], channels[-1])
    rev = list(reversed(channels))
    for i, c in enumerate(rev):
        prev = rev[max(i - 1, 0)]
        skip_in = rev[min(i + 1, n - 1)]
        for j in range(layers + 1):
            skip = skip_in if j == layers else c
            resnet(f"up_blocks.{i}.resnets.{j}", (prev if j == 0 else c) + skip, c)
            if i > 0:
                transformer(f"up_blocks.{i}.attentions.{j}", c)
            if motion in ("all", "decoder"):
                motion_module(f"up_blocks.{i}.motion_modules.{j}", c)
        if i < n - 1:
            s[f"up_blocks.{i}.upsamplers.0.conv.weight"] = (c, c, 3, 3)
            s[f"up_blocks.{i}.upsamplers.0.conv.bias"] = (c,)
    s.update({"conv_norm_out.weight": (channels[0],), "conv_norm_out.bias": (channels[0],),
              "conv_out.weight": (out_ch, channels[0], 3, 3), "conv_out.bias": (out_ch,)})
    return s


def meta_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def random_state_dict(shapes, generator, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Random weights scaled by fan-in (activations stay O(1)); norm gains near 1; exact sinusoid tables."""
    sd = {}
    dev = generator.device
    for k, shape in shapes.items():
        if k.endswith("pos_encoder.pe"):
            sd[k] = sinusoid_table(shape[1], shape[2], torch.float32).to(dev)  # stored as the official fp32 buffer
        elif len(shape) == 1 and k.endswith(".weight"):  # only norm layers have 1-D weights
            sd[k] = 1 + 0.1 * torch.randn(shape, generator=generator, dtype=dtype, device=dev)
        elif len(shape) == 1:
            sd[k] = 0.1 * torch.randn(shape, generator=generator, dtype=dtype, device=dev)
        else:
            fan_in = math.prod(shape[1:])
            sd[k] = torch.randn(shape, generator=generator, dtype=dtype, device=dev) / math.sqrt(fan_in)
    return sd


# ============================================================================ official forward passes


def ref_group_norm(x, groups, weight, bias, eps):
    """GroupNorm from its definition: statistics over (channels of the group) x all remaining dims of ``x``."""
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return y * weight.reshape(shape) + bias.reshape(shape)


def ref_layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def lin(x, sd, p, bias=True):
    y = x @ sd[f"{p}.weight"].T
    return y + sd[f"{p}.bias"] if bias and f"{p}.bias" in sd else y


def silu(x):
    return x * torch.sigmoid(x)


def ref_attention(x, ctx, sd, p, heads):
    q, k, v = lin(x, sd, f"{p}.to_q"), lin(ctx, sd, f"{p}.to_k"), lin(ctx, sd, f"{p}.to_v")
    n, lq, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(n, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (w @ v).transpose(1, 2).reshape(n, lq, c)
    return lin(out, sd, f"{p}.to_out.0")


def ref_ff(x, sd, p):
    h, gate = lin(x, sd, f"{p}.net.0.proj").chunk(2, dim=-1)
    return lin(h * F.gelu(gate), sd, f"{p}.net.2")


def fold(x):  # (b, c, f, h, w) -> (b f, c, h, w)
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)


def unfold(x, b):
    bf, c, h, w = x.shape
    return x.reshape(b, bf // b, c, h, w).transpose(1, 2)


def conv(x5, sd, p, stride=1, padding=1):
    return unfold(F.conv2d(fold(x5), sd[f"{p}.weight"], sd[f"{p}.bias"], stride=stride, padding=padding), x5.shape[0])


class OfficialUNetReference:
    """The official LatentSync U-Net forward, on an official state dict (names and semantics of the official code)."""

    def __init__(self, sd, groups=32, heads=8, motion_heads=8, layers=2, eps=1e-5):
        self.sd, self.groups, self.heads, self.motion_heads = sd, groups, heads, motion_heads
        self.layers, self.eps = layers, eps
        self.cross_key = "audio_cross_attn.attn" if any(".audio_cross_attn." in k for k in sd) else "attn2"
        self.cross_norm = "audio_cross_attn.norm" if self.cross_key != "attn2" else "norm2"

    def has(self, prefix):
        return any(k.startswith(prefix + ".") for k in self.sd)

    def resnet(self, x, temb, p):
        sd, g = self.sd, self.groups
        # the official GroupNorm sees the 5-D tensor: statistics pooled over all frames of the clip
        h = silu(ref_group_norm(x, g, sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], self.eps))
        h = conv(h, sd, f"{p}.conv1")
        h = h + lin(silu(temb), sd, f"{p}.time_emb_proj")[:, :, None, None, None]
        h = silu(ref_group_norm(h, g, sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], self.eps))
        h = conv(h, sd, f"{p}.conv2")
        if f"{p}.conv_shortcut.weight" in sd:
            x = conv(x, sd, f"{p}.conv_shortcut", padding=0)
        return x + h

    def transformer(self, x, ctx, p):
        sd, b = self.sd, x.shape[0]
        xf = fold(x)
        bf, c, hh, ww = xf.shape
        y = ref_group_norm(xf, self.groups, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], 1e-6)  # per frame
        y = F.conv2d(y, sd[f"{p}.proj_in.weight"], sd[f"{p}.proj_in.bias"])
        t = y.permute(0, 2, 3, 1).reshape(bf, hh * ww, c)
        q = f"{p}.transformer_blocks.0"
        n = lambda name, v: ref_layer_norm(v, sd[f"{q}.{name}.weight"], sd[f"{q}.{name}.bias"])  # noqa: E731
        t = ref_attention(n("norm1", t), n("norm1", t), sd, f"{q}.attn1", self.heads) + t
        t = ref_attention(n(self.cross_norm, t), ctx, sd, f"{q}.{self.cross_key}", self.heads) + t
        t = ref_ff(n("norm3", t), sd, f"{q}.ff") + t
        y = t.reshape(bf, hh, ww, c).permute(0, 3, 1, 2)
        y = F.conv2d(y, sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"])
        return unfold(y + xf, b)

    def motion(self, x, p):
        sd = self.sd
        p = f"{p}.temporal_transformer"
        b, c, f, hh, ww = x.shape
        xf = fold(x)
        y = ref_group_norm(xf, self.groups, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"], 1e-6)  # per frame
        t = lin(y.permute(0, 2, 3, 1).reshape(b * f, hh * ww, c), sd, f"{p}.proj_in")
        q = f"{p}.transformer_blocks.0"
        for i in (0, 1):
            n = ref_layer_norm(t, sd[f"{q}.norms.{i}.weight"], sd[f"{q}.norms.{i}.bias"])
            n = n.reshape(b, f, hh * ww, c).transpose(1, 2).reshape(b * hh * ww, f, c)  # (b f) d c -> (b d) f c
            n = n + sd[f"{q}.attention_blocks.{i}.pos_encoder.pe"][:, :f].to(n.dtype)
            a = ref_attention(n, n, sd, f"{q}.attention_blocks.{i}", self.motion_heads)
            t = a.reshape(b, hh * ww, f, c).transpose(1, 2).reshape(b * f, hh * ww, c) + t
        t = ref_ff(ref_layer_norm(t, sd[f"{q}.ff_norm.weight"], sd[f"{q}.ff_norm.bias"]), sd, f"{q}.ff") + t
        y = lin(t, sd, f"{p}.proj_out").reshape(b * f, hh, ww, c).permute(0, 3, 1, 2)
        return unfold(y + xf, b)

    def layer(self, x, temb, ctx, p, j):
        x = self.resnet(x, temb, f"{p}.resnets.{j}")
        if self.has(f"{p}.attentions.{j}"):
            x = self.transformer(x, ctx, f"{p}.attentions.{j}")
        if self.has(f"{p}.motion_modules.{j}"):
            x = self.motion(x, f"{p}.motion_modules.{j}")
        return x

    def __call__(self, sample, timestep, ctx):
        sd = self.sd
        c0 = sd["conv_in.weight"].shape[0]
        half = c0 // 2
        # the official model uses diffusers' Timesteps, which builds the sinusoid in float32 whatever the model dtype
        dev = sample.device
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=dev) / half)
        args = torch.full((sample.shape[0],), float(timestep), dtype=torch.float32, device=dev)[:, None] * freqs[None]
        temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(sample.dtype)  # flip_sin_to_cos
        temb = lin(silu(lin(temb, sd, "time_embedding.linear_1")), sd, "time_embedding.linear_2")
        x = conv(sample, sd, "conv_in")
        skips = [x]
        n = len({k.split(".")[1] for k in sd if k.startswith("down_blocks.")})
        for i in range(n):
            for j in range(self.layers):
                x = self.layer(x, temb, ctx, f"down_blocks.{i}", j)
                skips.append(x)
            if f"down_blocks.{i}.downsamplers.0.conv.weight" in sd:
                x = conv(x, sd, f"down_blocks.{i}.downsamplers.0.conv", stride=2)
                skips.append(x)
        x = self.resnet(x, temb, "mid_block.resnets.0")
        x = self.transformer(x, ctx, "mid_block.attentions.0")
        x = self.resnet(x, temb, "mid_block.resnets.1")
        for i in range(n):
            for j in range(self.layers + 1):
                x = torch.cat([x, skips.pop()], dim=1)
                x = self.layer(x, temb, ctx, f"up_blocks.{i}", j)
            if f"up_blocks.{i}.upsamplers.0.conv.weight" in sd:
                x = x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # nearest x2 on H, W
                x = conv(x, sd, f"up_blocks.{i}.upsamplers.0.conv")
        x = silu(ref_group_norm(x, self.groups, sd["conv_norm_out.weight"], sd["conv_norm_out.bias"], self.eps))
        return conv(x, sd, "conv_out")


def openai_whisper_checkpoint(gen, dims, dtype=torch.float64):
    d, ctx = dims["n_audio_state"], dims["n_audio_ctx"]
    shapes = {"encoder.conv1.weight": (d, dims["n_mels"], 3), "encoder.conv1.bias": (d,),
              "encoder.conv2.weight": (d, d, 3), "encoder.conv2.bias": (d,)}
    for i in range(dims["n_audio_layer"]):
        p = f"encoder.blocks.{i}"
        shapes.update({f"{p}.attn.query.weight": (d, d), f"{p}.attn.query.bias": (d,), f"{p}.attn.key.weight": (d, d),
                       f"{p}.attn.value.weight": (d, d), f"{p}.attn.value.bias": (d,), f"{p}.attn.out.weight": (d, d),
                       f"{p}.attn.out.bias": (d,), f"{p}.attn_ln.weight": (d,), f"{p}.attn_ln.bias": (d,),
                       f"{p}.mlp.0.weight": (4 * d, d), f"{p}.mlp.0.bias": (4 * d,), f"{p}.mlp.2.weight": (d, 4 * d),
                       f"{p}.mlp.2.bias": (d,), f"{p}.mlp_ln.weight": (d,), f"{p}.mlp_ln.bias": (d,)})
    shapes.update({"encoder.ln_post.weight": (d,), "encoder.ln_post.bias": (d,)})
    sd = random_state_dict(shapes, gen, dtype)
    pos = torch.arange(ctx, dtype=torch.float64)[:, None] * torch.exp(
        -math.log(10000) / (d // 2 - 1) * torch.arange(d // 2, dtype=torch.float64))[None]
    sd["encoder.positional_embedding"] = torch.cat([torch.sin(pos), torch.cos(pos)], dim=1).to(dtype)
    # decoder tensors are part of the official file and must be ignored
    text = dims["n_text_state"]
    sd["decoder.token_embedding.weight"] = torch.randn(dims["n_vocab"], text, generator=gen, dtype=dtype)
    sd["decoder.blocks.0.attn.query.weight"] = torch.randn(text, text, generator=gen, dtype=dtype)
    return {"dims": dims, "model_state_dict": sd}


def openai_encoder_states(sd, mel, heads, layers):
    """openai-whisper AudioEncoder, with the states LatentSync keeps: embeddings + every block output."""
    x = F.gelu(F.conv1d(mel, sd["encoder.conv1.weight"], sd["encoder.conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, sd["encoder.conv2.weight"], sd["encoder.conv2.bias"], stride=2, padding=1))
    x = x.permute(0, 2, 1) + sd["encoder.positional_embedding"]
    states = [x]
    for i in range(layers):
        p = f"encoder.blocks.{i}"
        h = ref_layer_norm(x, sd[f"{p}.attn_ln.weight"], sd[f"{p}.attn_ln.bias"])
        q, k, v = lin(h, sd, f"{p}.attn.query"), lin(h, sd, f"{p}.attn.key"), lin(h, sd, f"{p}.attn.value")
        n, t, d = q.shape
        scale = (d // heads) ** -0.25
        q = q.view(n, t, heads, -1).permute(0, 2, 1, 3) * scale
        k = k.view(n, t, heads, -1).permute(0, 2, 3, 1) * scale
        v = v.view(n, t, heads, -1).permute(0, 2, 1, 3)
        a = (torch.softmax(q @ k, dim=-1) @ v).permute(0, 2, 1, 3).flatten(2)
        x = x + lin(a, sd, f"{p}.attn.out")
        h = ref_layer_norm(x, sd[f"{p}.mlp_ln.weight"], sd[f"{p}.mlp_ln.bias"])
        x = x + lin(F.gelu(lin(h, sd, f"{p}.mlp.0")), sd, f"{p}.mlp.2")
        states.append(x)
    return torch.stack(states, dim=2)


# ============================================================================ official mask and pipeline window


def shipped_mask_path() -> Path:
    return Path(str(resources.files("latentsync").joinpath("assets", "mouth_mask.png")))


def official_mask(resolution: int, path: Path) -> np.ndarray:
    """The official recipe: read as BGR, to RGB, Lanczos resize of the 8-bit image, / 255, all three channels."""
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4) / 255.0


def official_windows(unet, vae, scheduler, faces, contexts, steps, guidance, seed, resolution, masked_first=True):
    """Final latents of each 16-frame window as the official pipeline computes them.

    Random draws in the official order: one initial noise map (1, 4, 1, h, w) for the whole video, first; then, per
    window, the VAE posterior sample of the masked faces, then that of the reference faces.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = unet.dtype
    mask = torch.from_numpy(official_mask(resolution, shipped_mask_path())).permute(2, 0, 1)  # (3, R, R) float64
    size = resolution // 8
    noise = torch.randn((1, 4, 1, size, size), generator=gen, dtype=dtype)
    out = []
    for window_faces, context in zip(faces, contexts):
        f = len(window_faces)
        pixels = (torch.from_numpy(window_faces).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
        masked = pixels * mask  # float32 x float64
        mask_lat = F.interpolate(mask[None, 0:1].expand(f, 1, -1, -1), size=(size, size))

        def encode(x):
            lat = vae.encode(x.to(dtype)).latent_dist.sample(generator=gen)
            return ((lat - 0.0) * 0.18215).permute(1, 0, 2, 3)[None]  # (1, 4, f, h, w)

        if masked_first:
            masked_lat = encode(masked)
            ref_lat = encode(pixels)
        else:
            ref_lat = encode(pixels)
            masked_lat = encode(masked)
        cond = torch.cat([mask_lat.to(dtype).permute(1, 0, 2, 3)[None], masked_lat, ref_lat], dim=1)
        audio = context.to(dtype)
        if guidance > 1:
            cond = torch.cat([cond] * 2)
            audio = torch.cat([torch.zeros_like(audio), audio])
        latents = noise.repeat(1, 1, f, 1, 1) * scheduler.init_noise_sigma
        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            x = torch.cat([latents] * 2) if guidance > 1 else latents
            x = torch.cat([scheduler.scale_model_input(x, t), cond], dim=1)
            eps = unet(x, t, encoder_hidden_states=audio).sample
            if guidance > 1:
                uncond, cond_eps = eps.chunk(2)
                eps = uncond + guidance * (cond_eps - uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
        out.append(latents)
    return out
