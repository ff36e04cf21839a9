"""`cache=deepcache` (diffusion/deepcache.py): against the DeepCache package's own helper, against the paper's
definition restated on the stock forward, exact at interval 1, counted as shallow by the FLOP plan, recorded as
shallow by whole runs, and compiled once (two graphs) with nothing recompiled after the warm-up."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch

from lipsync_lab.build import build_diffusion, build_unet
from lipsync_lab.config import compose
from lipsync_lab.diffusion.deepcache import DeepCache
from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.timing import BatchTimer

# LatentSync's v1.5 block structure at CPU widths (2 layers + a downsampler per down block, motion modules), as in
# tests/test_models_latentsync.py; the tiny preset has 1 layer per block (other branch numbering, see below)
SMALL_V15 = ["model=latentsync_v15", "model.unet.block_out_channels=[32,64]",
             "model.unet.down_block_types=[CrossAttnDownBlock2D,DownBlock2D]",
             "model.unet.up_block_types=[UpBlock2D,CrossAttnUpBlock2D]", "model.unet.norm_num_groups=8"]
MODELS = {"tiny-diffusers-norms": ["norm=diffusers"], "tiny": [], "v15-small": SMALL_V15}
TIMESTEPS = torch.tensor([951, 801, 651, 501, 351, 201, 51])  # 7 steps: full at 0, 3, 6 with interval 3
CLIPS, FRAMES, HW = 2, 4, 8


@pytest.fixture(scope="module", params=list(MODELS), ids=list(MODELS))
def unet(request):
    return build_unet(compose(MODELS[request.param]))


def step_inputs(seed=0):
    """A different (B, F, 13, h, w) input per step (the latents move between steps), one audio context."""
    g = torch.Generator().manual_seed(seed)
    samples = [torch.randn(CLIPS, FRAMES, 13, HW, HW, generator=g) for _ in TIMESTEPS]
    return samples, torch.randn(CLIPS, FRAMES, 50, 384, generator=g)


def ours(unet, branch, interval, samples, context, real=None):
    cache = DeepCache(interval=interval, branch=branch)
    cache.begin()
    with torch.inference_mode():
        return [cache.call(unet, cache.kind(i))(x, t, context, real)
                for i, (x, t) in enumerate(zip(samples, TIMESTEPS))]


def skips_per_down_block(unet) -> int:
    block = unet.unet.down_blocks[0]
    return len(block.resnets) + (block.downsamplers is not None)


def test_equals_the_deepcache_package_step_by_step(unet):
    """The DeepCache package's `DeepCacheSDHelper` driving the same inner diffusers model, same weights, same inputs,
    over 7 steps (full, shallow, shallow, full, …), interval 3, every branch: every step's eps equal within 1e-6
    (bitwise here: the same layers run on the same tensors).

    The package drives the bare diffusers model, so the frame mask LatentSyncUNet writes per call is written here
    by hand (clips unpadded); its `cache_branch_id` is block · 3 + layer, ours the skip's index — the same numbers
    for v1.5's 3 skips per down block, 3·(s // 2) + s % 2 for the tiny preset's 2. On the motion UNet the package
    wraps no motion module: at the cut block it recomputes their outputs from cached inputs (the same values, so
    the comparison holds there too; its shallow step is just not as cheap)."""
    from DeepCache import DeepCacheSDHelper

    samples, context = step_inputs()
    per_block = skips_per_down_block(unet)
    for branch in range(unet.branches):
        mine = ours(unet, branch, 3, samples, context)
        pipe = types.SimpleNamespace(unet=unet.unet, scheduler=types.SimpleNamespace(timesteps=TIMESTEPS))
        helper = DeepCacheSDHelper(pipe=pipe)
        helper.set_params(cache_interval=3, cache_branch_id=3 * (branch // per_block) + branch % per_block)
        helper.enable()
        try:
            theirs = []
            with torch.inference_mode():
                for x, t in zip(samples, TIMESTEPS):
                    unet.frame_mask.set(None, FRAMES)
                    ctx = context.flatten(0, 1)
                    if unet.temporal:
                        out = unet.unet(x.transpose(1, 2), t, encoder_hidden_states=ctx, return_dict=False)[0]
                        theirs.append(out.transpose(1, 2))
                    else:
                        out = unet.unet(x.flatten(0, 1), t, encoder_hidden_states=ctx, return_dict=False)[0]
                        theirs.append(out.unflatten(0, (CLIPS, FRAMES)))
        finally:
            helper.disable()
        for i, (a, b) in enumerate(zip(mine, theirs)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"branch {branch}, step {i}")
        # and the shallow steps are not full ones: the comparison could tell a cache that never caches
        with torch.inference_mode():
            full = unet(samples[1], TIMESTEPS[1], context)
        assert (mine[1] - full).abs().max() > 1e-2, branch


def skip_channels(inner) -> list[int]:
    """The channels of diffusers' skip tensors in `down_block_res_samples` order: conv_in's, then each down
    block's resnets' and downsampler's."""
    channels = [inner.conv_in.out_channels]
    for block in inner.down_blocks:
        channels += [r.out_channels for r in block.resnets]
        if block.downsamplers is not None:
            channels.append(block.downsamplers[0].out_channels)
    return channels


def definition(unet, branch, interval, samples, context, real):
    """The paper's definition (arXiv 2312.00858), restated on the stock `LatentSyncUNet.forward` — every layer
    runs, with LatentSync's norms, mask and layout as the pipeline has them: the up-path resnet that takes skip
    `branch` (diffusers' up path pops the skips from the end: up resnet k takes skip n − 1 − k) gets
    cat([h, skip]). On a full step h is kept; on a shallow step h is replaced by the kept one, so the output is the
    outer layers run on the new input with the deep feature of the last full step (the deep layers still run here,
    unused)."""
    inner = unet.unet
    channels = skip_channels(inner)
    resnets = [r for block in inner.up_blocks for r in block.resnets]
    cut, c_skip = resnets[len(channels) - 1 - branch], channels[branch]
    state = {}

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["input_tensor"]  # 2-D blocks pass it positionally, motion blocks by name
        if state["full"]:
            state["deep"] = x[:, :-c_skip].clone()
            return None
        x = torch.cat([state["deep"], x[:, -c_skip:]], dim=1)
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "input_tensor": x})

    handle = cut.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        outs = []
        with torch.inference_mode():
            for i, (x, t) in enumerate(zip(samples, TIMESTEPS)):
                state["full"] = i % interval == 0
                outs.append(unet(x, t, context, real))
        return outs
    finally:
        handle.remove()


def test_a_shallow_step_is_the_outer_layers_on_the_deep_feature_of_the_last_full_step(unet):
    """Against the definition above, on clips with a padded frame (the frame mask must reach the pieces as it
    reaches `forward`), at interval 2 (the package test runs 3): every branch, every step, within 1e-6."""
    samples, context = step_inputs(seed=1)
    real = torch.tensor([1.0, 1.0, 1.0, 0.0])
    for branch in range(unet.branches):
        mine = ours(unet, branch, 2, samples, context, real)
        reference = definition(unet, branch, 2, samples, context, real)
        for i, (a, b) in enumerate(zip(mine, reference)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"branch {branch}, step {i}")


def test_a_reduced_guidance_step_reads_the_audio_clip_of_the_deep_feature(unet):
    """residual_once and cfg_cache run some steps on the audio clip alone ([null | audio][1:]): a shallow step on
    one clip after a full step on two reads the trailing clip's deep feature — what the two-clip shallow step gives
    that clip (LatentSync's norms keep clips apart) — and a step needing clips the full step did not run is
    refused."""
    samples, context = step_inputs(seed=2)
    cache = DeepCache(interval=2)
    cache.begin()
    with torch.inference_mode():
        cache.call(unet, "full")(samples[0], TIMESTEPS[0], context)
        both = cache.call(unet, "shallow")(samples[1], TIMESTEPS[1], context)
        audio = cache.call(unet, "shallow")(samples[1][1:], TIMESTEPS[1], context[1:])
        torch.testing.assert_close(audio[0], both[1], rtol=0, atol=1e-5)
        cache.call(unet, "full")(samples[2][1:], TIMESTEPS[2], context[1:])
        with pytest.raises(LipsyncInputError, match="a shallow step on 2 clips after a full step on 1"):
            cache.call(unet, "shallow")(samples[3], TIMESTEPS[3], context)


def test_a_branch_the_unet_does_not_have_is_refused():
    unet = build_unet(compose())
    with pytest.raises(LipsyncInputError, match=r"cache.branch=4: this UNet has 4 skip branches \(0 … 3\)"):
        DeepCache(branch=4).call(unet, "full")
    with pytest.raises(LipsyncInputError, match="cache.interval=0: expects an integer ≥ 1"):
        DeepCache(interval=0)


def run_stage(overrides, batches):
    diffusion = build_diffusion(compose(["vae=tiny", "batch_frames=4", "steps=4", *overrides]))
    return [diffusion(faces, audio, BatchTimer(i, len(faces), warmup=False)).numpy()
            for i, (faces, audio) in enumerate(batches)], diffusion


@pytest.mark.parametrize("model", [[], SMALL_V15], ids=["tiny", "v15-small"])
def test_interval_1_is_cache_none_exactly_through_the_diffusion_stage(model):
    """Every step full: the pieces' full call is the UNet's forward, so the stage's output is cache=none's bit for
    bit — on a full batch and a short one; at interval 2 the shallow steps change it (the check could fail)."""
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8),
                torch.from_numpy(rng.standard_normal((n, 50, 384), dtype=np.float32))) for n in (4, 3)]
    plain, _ = run_stage([*model, "cache=none"], batches)
    every, stage = run_stage([*model, "cache=deepcache", "cache.interval=1"], batches)
    assert set(stage.unet_evals) == {"full"}
    for a, b in zip(plain, every):
        assert np.array_equal(a, b)
    cached, stage = run_stage([*model, "cache=deepcache", "cache.interval=2"], batches)
    assert stage.unet_evals == {"full": 2 * 2 * 3, "shallow": 2 * 2 * 3}  # 2 steps of each × 2 clips × 3 frames
    assert any(not np.array_equal(a, b) for a, b in zip(plain, cached))


def test_the_flop_plan_counts_shallow_steps_as_shallow():
    """steps=3 at interval 3: one full step and two shallow ones. The full one is cache=none's step; the shallow
    one (branch 0 of the tiny UNet: conv_in, the last up layer, the head) costs under a third of it."""
    from lipsync_lab.flops import stage_flops, stage_plans

    cfg = compose(["cache=deepcache", "steps=3"])
    assert [call[:2] for call in stage_plans(cfg)["denoise"]] == [("unet", "full"), ("unet", "shallow"),
                                                                   ("unet", "shallow")]
    deep = stage_flops(cfg)["denoise"]
    full = stage_flops(compose(["steps=1"]))["denoise"]
    shallow = (deep - full) / 2
    assert deep == pytest.approx(full + 2 * (stage_flops(compose(["cache=deepcache", "steps=2"]))["denoise"] - full))
    assert 0 < shallow < full / 3
    assert deep < stage_flops(compose(["steps=3"]))["denoise"]


@pytest.mark.parametrize("executor", ["sequential", "pipelined"])
def test_a_run_records_its_shallow_unet_frames(tmp_path, executor):
    from lipsync_lab.run import run

    cfg = compose(["cache=deepcache", "max_frames=16", "batch_frames=8", "steps=4", "sink=none",
                   "print_batches=false", "vae=tiny", f"executor={executor}"])
    summary = run(cfg, tmp_path)
    df = pd.read_parquet(tmp_path / "timings.parquet")
    per_batch = df[df["stage"] == "diffusion"].set_index("batch")
    # steps 0 and 3 full, 1 and 2 shallow; 2 clips (CFG) of 8 frames each
    assert per_batch["unet_frames_shallow"].tolist() == [32, 32] and per_batch["unet_frames"].tolist() == [64, 64]
    assert summary["unet_frames_shallow_per_batch"] == 32


def test_compiled_it_compiles_two_graphs_at_the_warm_up_and_none_after():
    """compile=unet with fullgraph: the full and the shallow call are one graph each (no break), both compiled by
    the warm-up batch; a full and a padded batch afterwards compile nothing, and agree with eager within a grey
    level (fp32 kernels of another order of summation)."""
    from lipsync_lab.optimize import graphs_compiled

    settings = ["vae=tiny", "batch_frames=4", "steps=3", "cache=deepcache"]
    compiled = build_diffusion(compose([*settings, "compile=unet", "compile.fullgraph=true"]))
    before = graphs_compiled()
    compiled.warm_up()
    assert graphs_compiled() - before == 2
    rng = np.random.default_rng(1)
    faces = rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    audio = torch.from_numpy(rng.standard_normal((4, 50, 384), dtype=np.float32))
    warm = graphs_compiled()
    outputs = [compiled(faces[:n], audio[:n], BatchTimer(i, n, warmup=False)).numpy() for i, n in enumerate((4, 2))]
    assert graphs_compiled() == warm
    assert compiled.unet_evals == {"full": 2 * 4, "shallow": 2 * 2 * 4}  # padded to 4 frames, 2 clips
    eager = build_diffusion(compose(settings))
    for n, out in zip((4, 2), outputs):
        reference = eager(faces[:n], audio[:n], BatchTimer(0, n, warmup=False)).numpy()
        assert np.abs(out.astype(int) - reference.astype(int)).max() <= 1
