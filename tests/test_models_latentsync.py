"""LatentSync architectures on diffusers (reference §4.1–4.3): sizes, and LatentSync's GroupNorm conventions checked
against plain-torch reference implementations written from the reference's description."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lipsync_lab.build import build_unet
from lipsync_lab.config import compose
from lipsync_lab.diffusion.latentsync import ClipGroupNorm, FrameGroupNorm
from lipsync_lab.errors import LipsyncInputError

# The LatentSync presets with CPU widths: same block structure (cross-attention and plain blocks, 2 layers per
# block, 8 heads, motion modules for v1.5), 2 blocks of 32/64 channels instead of 4 of 320…1280.
SMALL = ["model.unet.block_out_channels=[32,64]", "model.unet.down_block_types=[CrossAttnDownBlock2D,DownBlock2D]",
         "model.unet.up_block_types=[UpBlock2D,CrossAttnUpBlock2D]", "model.unet.norm_num_groups=8"]
B, FRAMES, HW = 2, 4, 8  # CFG halves, frames per clip, latent size


def small_unet(preset: str, norm: str = "latentsync", seed: int = 0):
    """LatentSyncUNet (the pipeline's UNet call) around the small preset."""
    return build_unet(compose([f"model={preset}", f"norm={norm}", f"seed={seed}", *SMALL]))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def unet_inputs(frames=FRAMES, seed=0):
    """(B, F, 13, h, w) clips and their (B, F, 50, 384) audio windows."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, frames, 13, HW, HW, generator=g), torch.randn(B, frames, 50, 384, generator=g)


# -- full-size architectures, on the meta device ---------------------------------------------------------------
@pytest.mark.parametrize("preset, params, rounded, resolution", [
    ("latentsync_v1", 849_962_244, "849.96", 256),
    ("latentsync_v15", 1_267_099_844, "1267.10", 256),
    ("latentsync_v16", 1_267_099_844, "1267.10", 512),
])
def test_full_size_parameter_counts(preset, params, rounded, resolution):
    cfg = compose([f"model={preset}"])
    with torch.device("meta"):
        wrapper = build_unet(cfg)
    unet = wrapper.unet  # the diffusers model inside
    n = sum(p.numel() for p in unet.parameters())
    assert n == params and f"{n / 1e6:.2f}" == rounded  # reference §4.1: 849.96 M / 1267.1 M
    assert cfg.model.resolution == resolution and wrapper.max_frames == (None if preset == "latentsync_v1" else 24)
    # LatentSync's GroupNorm conventions on every ResNet GroupNorm and conv_norm_out (22 ResNets · 2 + 1, §4.3)
    assert sum(isinstance(m, ClipGroupNorm) for m in unet.modules()) == 45
    assert isinstance(unet.conv_norm_out, ClipGroupNorm)
    pe = [k for k in unet.state_dict() if k.endswith("pos_embed.pe")]
    if preset == "latentsync_v1":
        assert len(unet.state_dict()) == 686 and not pe
    else:
        # 20 motion modules (none in the mid block); LatentSync stores 2 copies of each position table → its file
        # has 1206 parameters + 40 tables = 1246 tensors (§4.1)
        assert sum(isinstance(m, FrameGroupNorm) for m in unet.modules()) == 20
        assert len(list(unet.parameters())) + 2 * len(pe) == 1246
        assert unet.config.motion_max_seq_length == 24


def test_tiny_preset_has_the_latentsync_norm_and_it_is_selectable():
    assert any(isinstance(m, ClipGroupNorm) for m in build_unet(compose()).modules())
    stock = build_unet(compose(["norm=diffusers"]))
    assert not any(isinstance(m, (ClipGroupNorm, FrameGroupNorm)) for m in stock.modules())


# -- plain-torch references (reference §4.2) ---------------------------------------------------------------------
def group_norm_ref(x: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
    """nn.GroupNorm maths on any (N, C, ...) tensor: statistics per (n, group) over everything else."""
    g = x.reshape(x.shape[0], norm.num_groups, -1)
    y = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + norm.eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return y.reshape(x.shape) * norm.weight.reshape(shape) + norm.bias.reshape(shape)


def resnet_block_ref(block, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """LatentSync's ResnetBlock3D on x (B, C, F, H, W), temb (B, T): GN (5-D, so pooled over F) → SiLU → conv3 →
    + time projection → GN → SiLU → conv3, + (1×1) shortcut; the convs are 2-D convs on the folded frames."""
    def conv(layer, t):  # InflatedConv3d
        b, f = t.shape[0], t.shape[2]
        out = F.conv2d(t.transpose(1, 2).flatten(0, 1), layer.weight, layer.bias, padding=layer.padding)
        return out.unflatten(0, (b, f)).transpose(1, 2)

    h = conv(block.conv1, F.silu(group_norm_ref(x, block.norm1)))
    h = h + F.linear(F.silu(temb), block.time_emb_proj.weight, block.time_emb_proj.bias)[:, :, None, None, None]
    h = conv(block.conv2, F.silu(group_norm_ref(h, block.norm2)))
    shortcut = conv(block.conv_shortcut, x) if block.conv_shortcut is not None else x
    return shortcut + h


def motion_module_ref(mm, x: torch.Tensor) -> torch.Tensor:
    """LatentSync's VanillaTemporalModule on x (B, C, F, H, W): per-frame GN → Linear proj_in → per attention
    block: LN → + sinusoidal PE (interleaved sin/cos) → self-attention along F at each position → residual; LN →
    GEGLU FF → residual; Linear proj_out → residual."""
    b, c, f, h, w = x.shape
    frames = group_norm_ref(x.transpose(1, 2).flatten(0, 1), mm.norm)                    # (B·F, C, H, W)
    seq = frames.unflatten(0, (b, f)).permute(0, 3, 4, 1, 2).reshape(b * h * w, f, c)  # (B·H·W, F, C)
    seq = F.linear(seq, mm.proj_in.weight, mm.proj_in.bias)
    blk = mm.transformer_blocks[0]
    pos = torch.arange(f, dtype=torch.float32)[:, None]
    pe = torch.zeros(f, c)
    pe[:, 0::2] = torch.sin(pos / 10000 ** (torch.arange(0, c, 2) / c))
    pe[:, 1::2] = torch.cos(pos / 10000 ** (torch.arange(0, c, 2) / c))
    for ln, attn in ((blk.norm1, blk.attn1), (blk.norm2, blk.attn2)):
        q_in = F.layer_norm(seq, (c,), ln.weight, ln.bias, ln.eps) + pe
        heads = attn.heads

        def split(t):
            return t.unflatten(-1, (heads, c // heads)).transpose(1, 2)  # (N, heads, F, d)

        q, k, v = (split(F.linear(q_in, lin.weight, lin.bias)) for lin in (attn.to_q, attn.to_k, attn.to_v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
        out = (weights @ v).transpose(1, 2).flatten(-2)
        seq = seq + F.linear(out, attn.to_out[0].weight, attn.to_out[0].bias)
    ff_in = F.layer_norm(seq, (c,), blk.norm3.weight, blk.norm3.bias, blk.norm3.eps)
    hidden, gate = F.linear(ff_in, blk.ff.net[0].proj.weight, blk.ff.net[0].proj.bias).chunk(2, dim=-1)
    seq = seq + F.linear(hidden * F.gelu(gate), blk.ff.net[2].weight, blk.ff.net[2].bias)
    seq = F.linear(seq, mm.proj_out.weight, mm.proj_out.bias)
    return x + seq.reshape(b, h, w, f, c).permute(0, 4, 3, 1, 2)


@pytest.fixture(scope="module")
def motion_unets():
    """The small v1.5 UNet with each convention, same seeded weights."""
    ours, stock = small_unet("latentsync_v15", "latentsync", 3), small_unet("latentsync_v15", "diffusers", 3)
    for p, q in zip(ours.parameters(), stock.parameters(), strict=True):
        assert torch.equal(p, q)
    return ours, stock


def inner_call(wrapper, frames: int):
    """A block called directly (not through the UNet call): give it the call's clip length, as the UNet does."""
    wrapper.frame_mask.set(None, frames)
    return wrapper.unet


def test_resnet_block_matches_latentsync_reference(motion_unets):
    ours, stock = motion_unets
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 32, FRAMES, HW, HW, generator=g) * 2 + 0.5  # (B, C, F, H, W), 32 → 64 channels
    x[:, :, 1:] += torch.randn(B, 32, FRAMES - 1, 1, 1, generator=g)  # frames of a clip with other statistics
    temb = torch.randn(B, 128, generator=g)
    block = ours.unet.down_blocks[1].resnets[0]
    expected = resnet_block_ref(block, x, temb)

    def project(wrapper):  # diffusers' layout: frames folded into the batch, temb repeated per frame
        unet = inner_call(wrapper, FRAMES)
        out = unet.down_blocks[1].resnets[0](x.transpose(1, 2).flatten(0, 1), temb.repeat_interleave(FRAMES, 0))
        return out.unflatten(0, (B, FRAMES)).transpose(1, 2)

    assert block.conv_shortcut is not None
    assert rel(project(ours), expected) <= 1e-5
    assert rel(project(stock), expected) > 1e-2  # stock diffusers normalises each frame alone


def test_motion_module_matches_latentsync_reference(motion_unets):
    ours, stock = motion_unets
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 32, FRAMES, HW, HW, generator=g)
    x[:, :, 1:] = x[:, :, 1:] * 3 - 1  # frames with other statistics
    expected = motion_module_ref(ours.unet.down_blocks[0].motion_modules[0], x)
    assert rel(expected, x) > 1e-2  # the module does something (its proj_out is not zero here)

    def project(wrapper):
        folded = x.transpose(1, 2).flatten(0, 1)
        out = inner_call(wrapper, FRAMES).down_blocks[0].motion_modules[0](folded, num_frames=FRAMES)
        return out.unflatten(0, (B, FRAMES)).transpose(1, 2)

    assert rel(project(ours), expected) <= 1e-5
    assert rel(project(stock), expected) > 1e-2  # stock AnimateDiffTransformer3D pools its GN over the frames


# -- the conventions seen from the pipeline's one UNet call --------------------------------------------------------
@pytest.mark.parametrize("preset", ["latentsync_v1", "latentsync_v15"])
def test_cfg_halves_are_normalised_separately(preset):
    unet = small_unet(preset)
    x, ctx = unet_inputs()
    both = unet(x, 999, ctx)
    for half in range(B):  # each half alone gives the same as both together
        alone = unet(x[half:half + 1], 999, ctx[half:half + 1])
        torch.testing.assert_close(alone[0], both[half], rtol=1e-5, atol=1e-5)
    x2 = x.clone()
    x2[1] += 1.0
    torch.testing.assert_close(unet(x2, 999, ctx)[0], both[0], rtol=1e-5, atol=1e-5)


def test_clip_level_norm_couples_the_frames_of_a_clip():
    """v1.0 has no temporal layers: a frame's output depends on the other frames only through the clip-level
    GroupNorm. With stock (per-frame) statistics it does not depend on them at all."""
    x, ctx = unet_inputs()
    x2 = x.clone()
    x2[:, 1:] = x2[:, 1:] * 2 + 1  # change every frame but the first, in both halves
    ours = small_unet("latentsync_v1")
    assert rel(ours(x2, 999, ctx)[:, 0], ours(x, 999, ctx)[:, 0]) > 1e-3
    stock = small_unet("latentsync_v1", "diffusers")
    torch.testing.assert_close(stock(x2, 999, ctx)[:, 0], stock(x, 999, ctx)[:, 0], rtol=1e-5, atol=1e-5)


def pad_clips(x: torch.Tensor, ctx: torch.Tensor, frames: int, seed: int = 5):
    """Pad (B, k, …) clips to `frames` with random frames (the worst case: nothing like the real ones)."""
    g = torch.Generator().manual_seed(seed)
    b, k = x.shape[:2]
    px = torch.cat([x, 5 * torch.randn(b, frames - k, *x.shape[2:], generator=g) + 3], dim=1)
    pc = torch.cat([ctx, torch.randn(b, frames - k, *ctx.shape[2:], generator=g)], dim=1)
    return px, pc, (torch.arange(frames) < k).float()


@pytest.mark.parametrize("preset", ["latentsync_v1", "latentsync_v15"])
@pytest.mark.parametrize("norm", ["latentsync", "diffusers"])
def test_padded_frames_do_not_change_the_real_frames(preset, norm):
    """Static shapes: a clip of k real frames padded to F gives the real frames the output of the unpadded call
    — clip-level GroupNorm statistics and the motion modules' temporal attention count only real frames."""
    unet = small_unet(preset, norm)
    x, ctx = unet_inputs(frames=3)
    alone = unet(x, 999, ctx)
    px, pc, real = pad_clips(x, ctx, 8)
    padded = unet(px, 999, pc, real)
    assert rel(padded[:, :3], alone) <= 1e-5
    # counted as real, the padding changes the real frames wherever frames are coupled (all but v1.0 with stock
    # per-frame norms): so the equality above is the mask's doing
    unmasked = rel(unet(px, 999, pc)[:, :3], alone)
    assert unmasked <= 1e-5 if (preset, norm) == ("latentsync_v1", "diffusers") else unmasked > 1e-3


@pytest.mark.parametrize("preset", ["latentsync_v1", "latentsync_v15"])
def test_masked_norm_path_equals_the_plain_one(preset):
    """Compiled models always take the masked GroupNorm path (one graph for padded and full calls); with every
    frame real it computes what the plain path does, and both match the plain-torch reference of the clip norm."""
    unet = small_unet(preset)
    x, ctx = unet_inputs()
    plain = unet(x, 999, ctx)
    unet.frame_mask.static = True
    masked = unet(x, 999, ctx)
    assert rel(masked, plain) <= 1e-5
    norm = next(m for m in unet.modules() if isinstance(m, ClipGroupNorm))
    clips = torch.randn(B, norm.num_channels, FRAMES, HW, HW) * 3 + 2   # (B, C, F, H, W)
    unet.frame_mask.set(None, FRAMES)
    got = norm(clips.transpose(1, 2).flatten(0, 1)).unflatten(0, (B, FRAMES)).transpose(1, 2)
    assert rel(got, group_norm_ref(clips, norm)) <= 1e-5


def test_motion_unets_take_at_most_24_frames_per_call():
    unet = small_unet("latentsync_v15")
    x, ctx = unet_inputs(frames=24)
    assert unet(x, 999, ctx).shape == (B, 24, 4, HW, HW)
    x, ctx = unet_inputs(frames=25)
    with pytest.raises(LipsyncInputError, match=r"^batch_frames: 25 frames per UNet call, but this UNet takes at most "
                                                r"24 \(its temporal position table\)$"):
        unet(x, 999, ctx)
    # v1.0 has no position table: no limit
    assert small_unet("latentsync_v1")(x, 999, ctx).shape == (B, 25, 4, HW, HW)
