"""Guidance variants (diffusion/guidance.py): cfg, Residual CFG (self-negative, one-time negative), CFG-Cache.

Each variant's combined eps is checked against numbers worked out by hand and, through the real diffusion stage with
a stand-in UNet, against a float64 recomputation of its formula from what the UNet was given and returned; which
branches it asks for, against what the stage counts and flops.py plans; at guidance_scale = 1 every variant is cfg,
bit for bit, on the tiny model; each runs end to end under both executors.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lipsync_lab.build import build_scheduler, build_unet, build_vae, make
from lipsync_lab.config import compose
from lipsync_lab.diffusion.denoise import LipsyncDiffusion
from lipsync_lab.diffusion.guidance import CFG, CFGCache, ResidualOnce, ResidualSelf
from lipsync_lab.diffusion.steps import Step
from lipsync_lab.face.mask import mouth_mask
from lipsync_lab.flops import stage_flops, stage_plans
from lipsync_lab.timing import BatchTimer

N = 2  # frames per batch in the stage-level tests (few: the VAE and the tiny UNet run on a shared CPU)
VARIANTS = ["cfg", "residual_self", "residual_once", "cfg_cache"]
# UNet branches per step at guidance_scale > 1 with 3 steps (the YAML defaults: cfg_cache's interval 2)
COPIES = {"cfg": [2, 2, 2], "residual_self": [1, 1, 1], "residual_once": [2, 1, 1], "cfg_cache": [2, 1, 2]}
# the branches each step asks for, in order
BRANCHES = {"cfg": [["null", "audio"]] * 3, "residual_self": [["audio"]] * 3,
            "residual_once": [["null", "audio"], ["audio"], ["audio"]],
            "cfg_cache": [["null", "audio"], ["audio"], ["null", "audio"]]}


def guidance(option: str, scale: float, *keys: str):
    """The `guidance=option` object as build.py makes it (its YAML keys, `guidance_scale` as `scale`)."""
    cfg = compose([f"guidance={option}", f"guidance_scale={scale}", *keys])
    return make(cfg.guidance, scale=cfg.guidance_scale)


def stage(unet, guid, steps=3, frames=N) -> LipsyncDiffusion:
    cfg = compose(["vae=tiny"])  # the deterministic VAE: the stage's inputs do not depend on posterior draws
    return LipsyncDiffusion(unet, build_vae(cfg), build_scheduler(cfg), mouth_mask(256), steps=steps,
                            guidance=guid, frames=frames, static_shapes=False, seed=0)


def inputs(seed=0, n=N):
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)
    audio = torch.randn(n, 50, 384, generator=torch.Generator().manual_seed(seed)) + 3.0
    return faces, audio


def record_eps(diff: LipsyncDiffusion) -> list[tuple[int, torch.Tensor]]:
    """(t, eps) of every scheduler step the stage takes: the combined prediction each guidance variant gives."""
    got, step = [], diff.scheduler.step

    def recording(eps, t, latents, return_dict=False):
        got.append((int(t), eps.clone()))
        return step(eps, t, latents, return_dict=return_dict)

    diff.scheduler.step = recording
    return got


class StandIn(torch.nn.Module):
    """Stands in for the UNet: eps per branch from what it is given (a null branch — zero audio — and an audio branch
    answer differently, and both depend on the step's latents and conditioning), recording each call."""

    def __init__(self, audio: torch.Tensor):
        super().__init__()
        self.audio, self.calls = audio, []

    def forward(self, sample, timestep, context, real=None):
        branches, out = [], []
        for clip, ctx in zip(sample, context):
            if torch.count_nonzero(ctx) == 0:
                branches.append("null")
                out.append(0.25 * clip[:, :4] - 0.1 * clip[:, 9:13] + 0.3)
            else:
                assert torch.equal(ctx, self.audio), "an audio branch must get the batch's audio"
                branches.append("audio")
                out.append(-0.5 * clip[:, :4] + 0.2 * clip[:, 5:9] + ctx.mean(dim=(1, 2))[:, None, None, None])
        eps = torch.stack(out)
        # what the guidance saw: the latents, the reference latents, and each branch's prediction
        self.calls.append(dict(t=int(timestep), branches=branches, latents=sample[0, :, :4].clone(),
                               reference=sample[0, :, 9:13].clone(), eps=dict(zip(branches, eps.clone()))))
        return eps


def expected_eps(option: str, calls: list[dict], alphas_cumprod: torch.Tensor, g: float, delta: float,
                 interval: int = 2) -> list[torch.Tensor]:
    """Each step's combined eps recomputed in float64 from what the UNet was given and returned (the formulas of the
    variants' docstrings)."""
    out, x0_null, diff = [], None, None
    for i, call in enumerate(calls):
        ab = alphas_cumprod[call["t"]].double()
        sa, sb = ab.sqrt(), (1 - ab).sqrt()
        x, ref = call["latents"].double(), call["reference"].double()
        e = {k: v.double() for k, v in call["eps"].items()}
        if option == "cfg":
            out.append(e["null"] + g * (e["audio"] - e["null"]))
        elif option == "residual_self":
            neg = delta * (x - sa * ref) / sb
            out.append(neg + g * (e["audio"] - neg))
        elif option == "residual_once":
            if i == 0:
                x0_null = (x - sb * e["null"]) / sa
                neg = delta * e["null"]
            else:
                neg = delta * (x - sa * x0_null) / sb
            out.append(neg + g * (e["audio"] - neg))
        elif option == "cfg_cache":
            if i % interval == 0:
                diff = e["audio"] - e["null"]
                out.append(e["null"] + g * diff)
            else:
                out.append(e["audio"] + (g - 1) * diff)
    return out


# -- the formulas, by hand --------------------------------------------------------------------------------------
def hand_step(index: int, alpha_bar: float, latents: float, reference: float = 1.0, copies: int = 2) -> Step:
    """A one-frame step whose tensors are constants (2 × 2 latents), the audio being ones."""
    def full(v, c=4):
        return torch.full((1, c, 2, 2), float(v))
    audio = torch.ones(1, 50, 384)
    context = torch.cat([torch.zeros_like(audio)[None], audio[None]])[2 - copies:]
    return Step(index, torch.tensor(999 - index), full(latents), full(0.0, 9), context, None, full(reference),
                torch.tensor(alpha_bar))


class Constants:
    """A UNet whose every call returns eps_null for a null branch and eps_audio for an audio branch, recording the
    branches it was asked for."""

    def __init__(self):
        self.asked, self.values = [], (0.0, 0.0)

    def __call__(self, sample, timestep, context, real):
        kinds = ["null" if torch.count_nonzero(c) == 0 else "audio" for c in context]
        self.asked.append(kinds)
        null, audio = self.values
        return torch.stack([torch.full((1, 4, 2, 2), null if k == "null" else audio) for k in kinds])


def eps_of(guid, unet: Constants, step: Step, null: float, audio: float) -> float:
    unet.values = (null, audio)
    eps = guid.predict(unet, step)
    assert eps.shape == (1, 4, 2, 2) and torch.all(eps == eps.flatten()[0])
    return float(eps.flatten()[0])


def test_residual_self_by_hand():
    """ᾱ = 0.36 (√ᾱ = 0.6, √(1 − ᾱ) = 0.8), x_t = 2, x_ref = 1: ε' = (2 − 0.6)/0.8 = 1.75; with ε_a = 3 and g = 2,
    eps = 1.75 + 2·(3 − 1.75) = 4.25, and with δ = 0.5: 0.875 + 2·(3 − 0.875) = 5.125. One branch, the audio."""
    unet = Constants()
    guid = ResidualSelf(scale=2.0)
    guid.begin()
    assert eps_of(guid, unet, hand_step(0, 0.36, 2.0, copies=1), null=99.0, audio=3.0) == pytest.approx(4.25)
    guid = ResidualSelf(scale=2.0, delta=0.5)
    assert eps_of(guid, unet, hand_step(1, 0.36, 2.0, copies=1), null=99.0, audio=3.0) == pytest.approx(5.125)
    assert unet.asked == [["audio"], ["audio"]]


def test_residual_once_by_hand():
    """g = 2. Step 0 (ᾱ = 0.36, x = 2, ε_∅ = 1, ε_a = 3): eps = 1 + 2·(3 − 1) = 5 and x̂_∅ = (2 − 0.8·1)/0.6 = 2.
    Step 1 (ᾱ = 0.64: √ = 0.8, √(1 − ᾱ) = 0.6; x = 1.8, ε_a = 3): ε' = (1.8 − 0.8·2)/0.6 = 1/3,
    eps = 1/3 + 2·(3 − 1/3) = 17/3. Step 2 (ᾱ = 0.9216: 0.96, 0.28; x = 2.5, ε_a = 3): ε' = (2.5 − 1.92)/0.28 = 29/14,
    eps = 2·3 − 29/14 = 55/14. A null value the later steps would pick up if they asked (99) must not matter."""
    unet = Constants()
    guid = ResidualOnce(scale=2.0)
    guid.begin()
    assert eps_of(guid, unet, hand_step(0, 0.36, 2.0), null=1.0, audio=3.0) == pytest.approx(5.0)
    assert eps_of(guid, unet, hand_step(1, 0.64, 1.8), null=99.0, audio=3.0) == pytest.approx(17 / 3)
    assert eps_of(guid, unet, hand_step(2, 0.9216, 2.5), null=99.0, audio=3.0) == pytest.approx(55 / 14)
    assert unet.asked == [["null", "audio"], ["audio"], ["audio"]]
    # δ = 0.5 at step 0: 0.5·1 + 2·(3 − 0.5) = 5.5; x̂_∅ is still the null prediction's (δ scales the residual only):
    # step 1: ε' = 1/3, eps = 1/6 + 2·(3 − 1/6) = 35/6
    guid = ResidualOnce(scale=2.0, delta=0.5)
    guid.begin()
    assert eps_of(guid, unet, hand_step(0, 0.36, 2.0), null=1.0, audio=3.0) == pytest.approx(5.5)
    assert eps_of(guid, unet, hand_step(1, 0.64, 1.8), null=99.0, audio=3.0) == pytest.approx(35 / 6)
    # a new batch forgets the last one's negative: a later step before its first is an error, not a stale residual
    guid.begin()
    with pytest.raises(RuntimeError, match="first"):
        guid.predict(unet, hand_step(1, 0.64, 1.8))


def test_cfg_cache_by_hand():
    """g = 2, interval 2. Step 0 (full; ε_∅ = 1, ε_a = 3): D = 2, eps = 1 + 2·2 = 5. Step 1 (ε_a = 4): 4 + 1·2 = 6.
    Step 2 (full; 0.5, 1.5): D = 1, eps = 0.5 + 2·1 = 2.5. Step 3 (ε_a = 2): 2 + 1 = 3. With interval 3, step 2
    still reuses step 0's D: 7 + 1·2 = 9."""
    unet = Constants()
    guid = CFGCache(scale=2.0, interval=2)
    guid.begin()
    got = [eps_of(guid, unet, hand_step(i, 0.5, 0.0, copies=2), null=n, audio=a)
           for i, (n, a) in enumerate([(1.0, 3.0), (99.0, 4.0), (0.5, 1.5), (99.0, 2.0)])]
    assert got == pytest.approx([5.0, 6.0, 2.5, 3.0])
    assert unet.asked == [["null", "audio"], ["audio"], ["null", "audio"], ["audio"]]
    guid = CFGCache(scale=2.0, interval=3)
    guid.begin()
    got = [eps_of(guid, unet, hand_step(i, 0.5, 0.0), null=n, audio=a)
           for i, (n, a) in enumerate([(1.0, 3.0), (99.0, 4.0), (99.0, 7.0), (0.0, 1.0)])]
    assert got == pytest.approx([5.0, 6.0, 9.0, 2.0])
    guid.begin()
    with pytest.raises(RuntimeError, match="first full step"):
        guid.predict(unet, hand_step(1, 0.5, 0.0))
    with pytest.raises(ValueError, match="interval"):
        CFGCache(interval=0)


def traceable_unet(sample, timestep, context, real):
    """A stand-in UNet of tensor ops only: eps from the latents and the branch's audio."""
    return 0.5 * sample[:, :, :4] + context.mean(dim=(2, 3))[:, :, None, None, None]


def every_variant():
    return CFG(1.5), ResidualSelf(1.5, 0.7), ResidualOnce(1.5), CFGCache(1.5, interval=2)


def test_predict_reads_nothing_back_to_the_host():
    """Every variant's steps run on the meta device, where any value read back to the host (.item(), float(t),
    branching on a tensor's value) raises: ᾱ_t and the per-batch state stay tensors on the device, so a step does not
    wait for the device between CUDA-graph replays of a compiled UNet."""
    meta = dict(device="meta")
    cond, latents, reference = torch.empty(1, 9, 2, 2, **meta), torch.empty(1, 4, 2, 2, **meta), torch.empty(
        1, 4, 2, 2, **meta)
    for guid in every_variant():
        context = guid.embeddings(torch.empty(1, 50, 384, **meta))
        guid.begin()
        for i in range(3):
            step = Step(i, torch.tensor(999, **meta), latents, cond, context, None, reference,
                        torch.tensor(0.3, **meta))
            assert guid.predict(traceable_unet, step).shape == (1, 4, 2, 2)


def test_predict_is_one_graph():
    """Every variant's step traces into one graph (torch.compile, fullgraph): no graph break around the compiled
    UNet's calls, the per-batch state carried as a tensor from one step to the next."""
    cond = torch.rand(1, 9, 2, 2)
    for guid in every_variant():
        context = guid.embeddings(torch.rand(1, 50, 384))
        guid.begin()
        for i in range(3):
            def predict(latents, reference, alpha_bar, i=i, guid=guid, context=context):
                return guid.predict(traceable_unet, Step(i, torch.tensor(999), latents, cond, context, None,
                                                         reference, alpha_bar))
            torch._dynamo.reset()
            compiled = torch.compile(predict, backend="eager", fullgraph=True)
            args = (torch.rand(1, 4, 2, 2), torch.rand(1, 4, 2, 2), torch.tensor(0.3))
            torch.testing.assert_close(compiled(*args), predict(*args), rtol=1e-6, atol=1e-6)


# -- through the diffusion stage --------------------------------------------------------------------------------
@pytest.mark.parametrize("option", VARIANTS)
def test_each_variant_combines_what_it_asked_for(option):
    """With a stand-in UNet, through the real stage (DPM-Solver++, 3 steps: t = 999, 666, 333), over two batches:
    the branches each step asks for, and the eps handed to the scheduler against a float64 recomputation of the
    variant's formula from the UNet's inputs and outputs (g = 2, δ = 0.8)."""
    g, delta = 2.0, 0.8
    guid = guidance(option, g, *([f"guidance.delta={delta}"] if option.startswith("residual") else []))
    for seed in (0, 1):  # a second batch: its one-time negative and cached difference are its own
        faces, audio = inputs(seed)
        unet = StandIn(audio)
        diff = stage(unet, guid)
        got = record_eps(diff)
        diff(faces, audio, BatchTimer(0, N, warmup=False))
        assert [c["branches"] for c in unet.calls] == BRANCHES[option]
        assert dict(diff.unet_evals) == {"full": sum(guid.copies(3)) * N} and guid.copies(3) == COPIES[option]
        assert [t for t, _ in got] == [999, 666, 333] == [c["t"] for c in unet.calls]
        want = expected_eps(option, unet.calls, diff.scheduler.alphas_cumprod, g, delta)
        for i, ((_, eps), ref) in enumerate(zip(got, want)):
            torch.testing.assert_close(eps.double(), ref, rtol=1e-5, atol=1e-4, msg=f"{option} step {i}")
        # the reference latents the residual variants use are the stage's (the unmasked face, VAE-encoded)
        assert not torch.allclose(unet.calls[0]["reference"], unet.calls[0]["latents"])


@pytest.mark.parametrize("option", VARIANTS)
@pytest.mark.parametrize("scale", [1.5, 1.0])
def test_copies_are_what_flops_plans(option, scale):
    """copies(steps) is the clips flops.py plans per step (the stage's counted frame-evaluations are checked against
    it in the two tests around this one, at g = 2 and g = 1); at g = 1 every variant runs one branch."""
    copies = COPIES[option] if scale > 1 else [1, 1, 1]
    assert guidance(option, scale).copies(3) == copies
    plan = stage_plans(compose([f"guidance={option}", f"guidance_scale={scale}", "steps=3"]))["denoise"]
    assert [clips for _, _, clips, _ in plan] == copies
    assert {frames for _, _, _, frames in plan} == {8}  # the config's batch_frames


def test_flops_follow_the_branches():
    """flops.py's denoise FLOPs at 3 steps: residual_self is half of cfg's, residual_once 4/6, cfg_cache 5/6."""
    flops = {option: stage_flops(compose([f"guidance={option}", "steps=3"]))["denoise"] for option in VARIANTS}
    assert flops["residual_self"] == pytest.approx(flops["cfg"] / 2, rel=1e-9)
    assert flops["residual_once"] == pytest.approx(flops["cfg"] * 4 / 6, rel=1e-9)
    assert flops["cfg_cache"] == pytest.approx(flops["cfg"] * 5 / 6, rel=1e-9)


@pytest.fixture(scope="module")
def tiny_unet():
    return build_unet(compose(["model=tiny"]))


def test_every_variant_is_cfg_at_scale_one(tiny_unet):
    """guidance_scale = 1 (nothing to guide): every variant hands the scheduler cfg's eps bit for bit at every step,
    on the tiny model, the output frames are cfg's, and each ran one branch a step (the stage's count)."""
    faces, audio = inputs()
    results = {}
    for option in VARIANTS:
        diff = stage(tiny_unet, guidance(option, 1.0))
        got = record_eps(diff)
        out = diff(faces, audio, BatchTimer(0, N, warmup=False))
        assert dict(diff.unet_evals) == {"full": 3 * N}, option
        results[option] = (got, out)
    ref_eps, ref_out = results["cfg"]
    for option in VARIANTS[1:]:
        eps, out = results[option]
        assert len(eps) == 3 and all(torch.equal(a, b) for (_, a), (_, b) in zip(eps, ref_eps)), option
        assert torch.equal(out, ref_out), option


def test_degenerate_settings_on_the_tiny_model(tiny_unet):
    """At g = 1.5 on the tiny model (2 steps): cfg_cache with interval 1 is cfg at every step, bit for bit;
    residual_once's first step is cfg's (δ = 1: the one-time negative is the null branch itself there) and its
    second is not."""
    faces, audio = inputs()

    def eps_of_run(option, *keys):
        diff = stage(tiny_unet, guidance(option, 1.5, *keys), steps=2)
        got = record_eps(diff)
        diff(faces, audio, BatchTimer(0, N, warmup=False))
        return [eps for _, eps in got]

    cfg = eps_of_run("cfg")
    assert all(torch.equal(a, b) for a, b in zip(eps_of_run("cfg_cache", "guidance.interval=1"), cfg))
    once = eps_of_run("residual_once")
    assert torch.equal(once[0], cfg[0]) and not torch.allclose(once[1], cfg[1])


# -- end to end -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("executor", ["sequential", "pipelined"])
@pytest.mark.parametrize("option", VARIANTS)
def test_runs_end_to_end(option, executor, tmp_path):
    """A short run of each variant under each executor: the UNet frame-evaluations recorded per batch (timings
    and summary) are what copies() says (2 steps, 8 frames)."""
    from lipsync_lab.run import run

    cfg = compose([f"guidance={option}", f"executor={executor}", "max_frames=16", "batch_frames=8", "steps=2",
                   "sink=none", "print_batches=false", "vae=tiny"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "ok"
    per_batch = sum(make(cfg.guidance, scale=cfg.guidance_scale).copies(2)) * 8
    assert per_batch == {"cfg": 32, "residual_self": 16, "residual_once": 24, "cfg_cache": 24}[option]
    timings = pd.read_parquet(tmp_path / "timings.parquet")
    frames = timings.groupby("batch")["unet_frames"].max()
    assert len(frames) == 2 and (frames == per_batch).all(), frames.to_dict()
    assert json.loads((tmp_path / "summary.json").read_text())["summary"]["unet_frames_per_batch"] == per_batch
    assert summary["unet_frames_per_batch"] == per_batch


def test_the_new_keys_are_checked():
    """`guidance.interval` and `guidance.delta` are checked before anything is built, and belong to their options."""
    from lipsync_lab.errors import LipsyncInputError
    from lipsync_lab.schema import check_command_line

    for overrides, message in [(["guidance=cfg_cache", "guidance.interval=0"], "expects an integer ≥ 1"),
                               (["guidance=residual_self", "guidance.delta=-1"], "expects a number ≥ 0"),
                               (["guidance.interval=2"], "it is a setting of guidance=cfg_cache")]:
        with pytest.raises(LipsyncInputError, match=message):
            check_command_line(overrides, False)
    check_command_line(["guidance=residual_once", "guidance.delta=0.5", "guidance_scale=2"], False)
