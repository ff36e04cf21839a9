"""Diffusion stage: 13-channel UNet input, mask polarity, CFG batch doubling, shared noise, composite, schedulers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync_lab.config import compose
from lipsync_lab.diffusion.denoise import LipsyncDiffusion
from lipsync_lab.diffusion.guidance import CFG
from lipsync_lab.build import build_scheduler, build_unet, build_vae
from lipsync_lab.face.mask import mouth_mask
from lipsync_lab.timing import DIFFUSION_SUBSTAGES, BatchTimer

N = 4


class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet (LatentSyncUNet's call): records what it is called with and predicts eps = 0."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, sample, timestep, context, real=None):
        self.calls.append((sample.clone(), timestep, context.clone(), real))
        return torch.zeros(*sample.shape[:2], 4, *sample.shape[3:])


def make(unet, guidance=1.5, steps=2, scheduler="ddim", frames=N, compile="none"):
    cfg = compose([f"scheduler={scheduler}", f"compile={compile}"])
    return LipsyncDiffusion(unet, build_vae(cfg), build_scheduler(cfg), mouth_mask(256), steps=steps,
                            guidance=CFG(guidance), frames=frames, static_shapes=cfg.compile.static_shapes,
                            seed=0)


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (N, 256, 256, 3), dtype=np.uint8)
    audio = torch.randn(N, 50, 384, generator=torch.Generator().manual_seed(seed)) + 3.0
    return faces, audio


def test_unet_input_assembly_cfg_and_shared_noise():
    unet = RecordingUNet()
    diff = make(unet, guidance=1.5, steps=2)
    faces, audio = inputs()
    timer = BatchTimer(0, N, warmup=False)
    out = diff(faces, audio, timer)
    assert out.shape == (N, 256, 256, 3) and out.dtype == torch.uint8
    assert len(unet.calls) == 2  # one UNet call per step

    sample, t, context, real = unet.calls[0]
    # CFG doubles the batch: 2 clips [null audio | audio] of N frames, 13 channels, 32x32 latents
    assert sample.shape == (2, N, 13, 32, 32)
    assert context.shape == (2, N, 50, 384)
    assert torch.count_nonzero(context[0]) == 0
    torch.testing.assert_close(context[1], audio)
    uncond, cond = sample[0], sample[1]
    torch.testing.assert_close(uncond, cond)  # both halves see identical latents and conditioning
    # channels: noisy latents (4) | mask (1) | masked-face latents (4) | reference latents (4)
    noisy, mask, masked_lat, ref_lat = cond[:, :4], cond[:, 4:5], cond[:, 5:9], cond[:, 9:13]
    for f in range(1, N):  # one noise map shared by every frame
        torch.testing.assert_close(noisy[f], noisy[0])
    torch.testing.assert_close(noisy[0], diff.noise[0] * diff.scheduler.init_noise_sigma)
    expected_mask = torch.nn.functional.interpolate(torch.from_numpy(mouth_mask(256))[None, None], size=(32, 32),
                                                    mode="nearest")[0]
    for f in range(N):
        torch.testing.assert_close(mask[f], expected_mask)
    assert mask[0, 0, 2, 16] == 1.0 and mask[0, 0, 25, 16] == 0.0  # forehead kept, mouth regenerated
    # masked-face latents differ from reference latents (the mouth was blanked before encoding)
    assert not torch.allclose(masked_lat, ref_lat)
    # every stage of the design is timed, and each step is recorded
    assert set(DIFFUSION_SUBSTAGES) <= set(timer.seconds) and len(timer.steps) == 2


def test_masked_face_is_face_times_mask():
    """The masked image fed to the VAE is pixels · mask: mouth pixels become 0 (mid-grey), the rest unchanged."""
    unet = RecordingUNet()
    diff = make(unet, guidance=1.0)
    seen = []
    original = diff.vae.encode
    diff.vae.encode = lambda px, noise=None: seen.append(px.clone()) or original(px, noise)
    faces, audio = inputs()
    diff(faces, audio, BatchTimer(0, N, warmup=False))
    masked, pixels = seen
    mask = torch.from_numpy(mouth_mask(256))
    torch.testing.assert_close(masked, pixels * mask)
    assert masked[:, :, 200, 128].abs().max() == 0 and pixels[:, :, 200, 128].abs().max() > 0


def test_no_cfg_runs_a_single_copy():
    unet = RecordingUNet()
    diff = make(unet, guidance=1.0, steps=3)
    faces, audio = inputs()
    diff(faces, audio, BatchTimer(0, N, warmup=False))
    assert len(unet.calls) == 3 and unet.calls[0][0].shape[:2] == (1, N)
    torch.testing.assert_close(unet.calls[0][2][0], audio)


def test_cfg_combines_eps_with_guidance():
    """eps = eps_null + g·(eps_audio − eps_null): with a UNet that returns 1 for null and 3 for audio and g = 1.5,
    the scheduler must receive 4."""

    class TwoValued(RecordingUNet):
        def forward(self, sample, timestep, context, real=None):
            n = sample.shape[1]
            return torch.stack([torch.full((n, 4, 32, 32), 1.0), torch.full((n, 4, 32, 32), 3.0)])

    diff = make(TwoValued(), guidance=1.5, steps=1)
    got = []
    step = diff.scheduler.step

    def recording_step(eps, t, latents, return_dict=False):
        got.append(eps.clone())
        return step(eps, t, latents, return_dict=return_dict)

    diff.scheduler.step = recording_step
    faces, audio = inputs()
    diff(faces, audio, BatchTimer(0, N, warmup=False))
    torch.testing.assert_close(got[0], torch.full((N, 4, 32, 32), 4.0))


def test_decode_composite_keeps_unmasked_pixels_exactly():
    faces, audio = inputs()
    out = make(RecordingUNet(), guidance=1.5)(faces, audio, BatchTimer(0, N, warmup=False)).numpy()
    keep = mouth_mask(256) == 1
    assert np.array_equal(out[:, keep], faces[:, keep])
    assert not np.array_equal(out[:, ~keep], faces[:, ~keep])  # the mouth region is the model's


def test_real_tiny_unet_runs_and_is_deterministic():
    unet = build_unet(compose(["model=tiny"]))  # with LatentSync's norm conventions
    faces, audio = inputs()
    a = make(unet)(faces, audio, BatchTimer(0, N, warmup=False))
    b = make(unet)(faces, audio, BatchTimer(0, N, warmup=False))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name,steps,expected", [
    ("dpmpp", 3, [999, 666, 333]),                       # the seed's (reference §4.6)
    ("ddim", 20, list(range(951, 0, -50))),             # upstream's, "leading" spacing: 951, 901, …, 1
])
def test_scheduler_timesteps_match_reference(name, steps, expected):
    sched = build_scheduler(compose([f"scheduler={name}"]))
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == expected


def test_the_vae_gets_contiguous_pixels_and_encodes_them_exactly():
    """'Prepare face masks' hands the VAE NCHW-contiguous tensors: the channels-last strides of the permuted uint8
    frames send CPU convolutions down a less exact path (here 4.9e-6 from an fp64 reference instead of 9.8e-7 for
    the small KL VAE; a reference report saw 3.4e-3 elsewhere), which spreads through every later sub-stage."""
    diff = make(RecordingUNet(), guidance=1.0)
    seen = []
    original = diff.vae.encode
    diff.vae.encode = lambda px, noise=None: seen.append(px.clone(memory_format=torch.preserve_format)) or \
        original(px, noise)
    faces, audio = inputs()
    diff(faces, audio, BatchTimer(0, N, warmup=False))
    reference = build_vae(compose(["scheduler=ddim"])).double()  # the same seeded weights, in fp64
    with torch.no_grad():
        for px in seen:  # the masked face and the reference face
            assert px.is_contiguous()
            got = diff.vae.model.encode(px).latent_dist.mean.double()
            want = reference.model.encode(px.double()).latent_dist.mean
            assert float((got - want).abs().max()) < 2e-6
