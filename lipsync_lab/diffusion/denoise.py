"""One batch of latent-diffusion mouth inpainting, as eight timed sub-stages (design §2, reference §1, §4.4).

UNet input per frame: cat([noisy latents (4), mouth mask (1), masked-face latents (4), reference latents (4)])
= 13 channels. Mask polarity is LatentSync's: 1 = keep, 0 = regenerate. How each denoising step is guided
(`guidance=`: which branches the UNet evaluates and how they combine, diffusion/guidance.py) and which UNet callable
it runs (`cache=`: the whole UNet, or a cheaper one reusing cached features) are variants (diffusion/steps.py); after
each step they get a hook in the shape of diffusers' callback_on_step_end. One noise map is shared by every frame of
the video (upstream's choice; the fork redrew it per batch).

What a batch ran is counted: `unet_evals` (frame-evaluations of the UNet, by callable kind, e.g. 48 full for 8
frames × 2 branches × 3 steps under CFG) and `flop_plan` (what flops.py counts) say it, from the same variants.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from lipsync_lab.diffusion.cache import NoCache
from lipsync_lab.diffusion.guidance import CFG
from lipsync_lab.diffusion.steps import Step, unet_input
from lipsync_lab.diffusion.unet import LatentSyncUNet
from lipsync_lab.diffusion.vae import LatentVAE
from lipsync_lab.errors import LipsyncInputError
from lipsync_lab.timing import BatchTimer, device_sync


class LipsyncDiffusion:
    """The diffusion stage of one batch. With `static_shapes` every call runs `frames` frames: a short batch (the
    stream's last, or one where only some frames have a face) is padded by repeating its last face, and the UNet
    is told which frames are real, so compiled models never see a new shape and the real frames' output is what
    an unpadded call gives (the padding stays out of every statistic that couples frames)."""

    uses_models = True  # build.py builds the UNet and VAE for it

    def __init__(self, unet: LatentSyncUNet, vae: LatentVAE, scheduler, mask: np.ndarray, *, steps: int,
                 frames: int, guidance=None, cache=None, static_shapes: bool = True, device="cpu",
                 dtype=torch.float32, seed: int = 0, compile_report=None, stream_batch: bool = False):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.guidance = guidance if guidance is not None else CFG()  # diffusion/guidance.py
        self.cache = cache if cache is not None else NoCache()       # diffusion/cache.py
        self.compile_report = compile_report  # optimize.CompileReport: what was applied to these models (build.py)
        self.steps = int(steps)
        self.frames, self.static_shapes = int(frames), bool(static_shapes)
        self.device, self.dtype = torch.device(device), dtype
        self.resolution = mask.shape[0]
        self.latent_size = self.resolution // vae.downscale
        self.mask = torch.as_tensor(mask, dtype=dtype, device=self.device)[None, None]  # (1,1,res,res)
        self.mask_latent = torch.nn.functional.interpolate(self.mask, size=(self.latent_size,) * 2, mode="nearest")
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.noise = torch.randn((1, 4, self.latent_size, self.latent_size), generator=self.generator,
                                 device=self.device, dtype=torch.float32).to(dtype)
        # (frames,) masks "the first n frames are real", made once on the device
        self._real = {n: (torch.arange(self.frames, device=self.device) < n).float()
                      for n in range(1, self.frames + 1)}
        # ᾱ_t by timestep, on the device (residual guidance reads it each step without a host round trip)
        self._alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.unet_evals: Counter = Counter()  # UNet frame-evaluations by callable kind, since the last batch began
        # Stream Batch: clips in flight at different steps share one UNet call per batch (submit / flush)
        self.stream_batch = bool(stream_batch)
        self._in_flight: list[_Clip] = []
        self._steady_branches = sum(self.guidance.copies(self.steps))  # branches of a steady shared call
        if self.stream_batch and any(self.cache.kind(i) != "full" for i in range(self.steps)):
            raise LipsyncInputError("diffusion.stream_batch", f"clips at different steps share one UNet call, so "
                                    f"every step must run the same UNet callable; {type(self.cache).__name__} "
                                    f"runs cheaper ones on some steps (use cache=none, or an interval of 1)")

    def regenerated_region(self) -> np.ndarray:
        """(res, res) bool: where the model paints (the mouth; mask 0). Drift is measured there (compare.py)."""
        return (self.mask[0, 0] == 0).cpu().numpy()

    def flop_plan(self) -> dict[str, list[tuple]]:
        """What one full batch runs, per stage key: flops.py counts it (see `plan`)."""
        return self.plan(self.steps, self.frames, self.guidance, self.cache)

    @staticmethod
    def plan(steps: int, frames: int, guidance, cache) -> dict[str, list[tuple]]:
        """What one full batch of `frames` frames runs with these settings, per stage key: ("unet", kind, clips,
        frames) per denoising step in order (the cache variant's callable kind, the guidance variant's branches),
        ("vae", "encode" | "decode", frames)."""
        encode, decode = [("vae", "encode", frames)], [("vae", "decode", frames)]
        kinds = [cache.kind(i) for i in range(steps)]
        return dict(mask_latents=encode, image_latents=encode, decode=decode,
                    denoise=[("unet", kind, copies, frames) for kind, copies in zip(kinds, guidance.copies(steps))])

    def _counted(self, call, frames: int, kind: str):
        """The UNet callable, counting the frame-evaluations it runs (clips × frames, padding included)."""
        def counted(sample, *args):
            self.unet_evals[kind] += sample.shape[0] * frames
            return call(sample, *args)
        return counted

    def _posterior_noise(self, n: int) -> torch.Tensor | None:
        """Noise for sampling a stochastic VAE's posterior: always `frames` draws, so the random stream does not
        depend on how many frames a batch has or whether it is padded."""
        if not self.vae.stochastic:
            return None
        shape = (self.frames, 4, self.latent_size, self.latent_size)
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=torch.float32)[:n].to(self.dtype)

    # -- one batch ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, faces: np.ndarray | torch.Tensor, audio: torch.Tensor, timer: BatchTimer) -> torch.Tensor:
        """faces (N, res, res, 3) uint8 RGB (host array or device tensor), audio (N, 50, 384) → (N, res, res, 3)
        uint8 on the model's device, with a new mouth (a device-side restore takes it from there)."""
        self.unet_evals = Counter()
        clip = self._prepare(faces, audio, timer, self.scheduler, self.guidance)

        # 7. Denoising process: per step, the cache variant picks the UNet callable, the guidance variant evaluates
        #    its branches and combines them, the scheduler steps, then each variant's step-end hook
        with timer.stage("denoise"):
            self.cache.begin()
            for i, t in enumerate(self.scheduler.timesteps):
                with timer.step(int(t)):
                    kind = self.cache.kind(i)
                    self._step(clip, self._counted(self.cache.call(self.unet, kind), clip.calls, kind))

        # 8. Decode and post-process: composite in aligned space (only the mouth region is new)
        with timer.stage("decode"):
            return self._decode(clip)

    def _prepare(self, faces, audio, timer: BatchTimer, scheduler, guidance) -> "_Clip":
        """Sub-stages 1–6 of a batch: its clip ready to denoise (`scheduler` and `guidance` become the clip's)."""
        n = faces.shape[0]
        if n > self.frames:
            raise ValueError(f"{n} frames in a batch of at most {self.frames}")
        calls = self.frames if self.static_shapes else n  # frames per UNet/VAE call
        real = self._real[n] if self.static_shapes else None
        if calls > n:  # pad by repeating the last face (its outputs are dropped)
            keep = torch.as_tensor(np.minimum(np.arange(calls), n - 1))
            faces, audio = faces[keep.to(faces.device) if torch.is_tensor(faces) else keep.numpy()], audio[keep]
        dev, dt = self.device, self.dtype

        # 1. Prepare latent variables: one noise map shared by all frames
        with timer.stage("latents"):
            latents = self.noise.expand(calls, -1, -1, -1).clone() * scheduler.init_noise_sigma

        # 2. Set timesteps (also resets a multistep solver's history for this batch)
        with timer.stage("timesteps"):
            scheduler.set_timesteps(self.steps, device=dev)

        # 3. Prepare audio embeddings: what the guidance's branches need, (copies, frames, 50, 384) — under CFG
        #    [null (zeros) | audio]
        with timer.stage("audio_embeds"):
            context = guidance.embeddings(audio.to(dev, dt))
            guidance.begin()

        # 4. Prepare face masks: pixels in [-1, 1], masked face = pixels · mask (mouth → 0, mid-grey)
        with timer.stage("masks"):
            # NCHW contiguous: the permuted (channels-last) strides send CPU convolutions down a far less exact path
            # (masked-face latents 3e-3 from an fp64 reference instead of 1e-6), and upstream's pixels are contiguous
            pixels = torch.as_tensor(faces).to(dev, non_blocking=True).permute(0, 3, 1, 2).contiguous()
            pixels = pixels.to(dt) / 127.5 - 1.0
            masked = pixels * self.mask

        # 5. Prepare mask latent variables: mask at latent size, VAE-encoded masked face
        with timer.stage("mask_latents"):
            mask_lat = self.mask_latent.expand(calls, -1, -1, -1)
            masked_lat = self.vae.encode(masked, self._posterior_noise(calls))

        # 6. Prepare image latent variables: the reference is the same frame, unmasked
        with timer.stage("image_latents"):
            ref_lat = self.vae.encode(pixels, self._posterior_noise(calls))
            cond = torch.cat([mask_lat, masked_lat, ref_lat], dim=1)  # (frames, 9, h, w)
        return _Clip(n, calls, latents, cond, context, real, ref_lat, pixels, scheduler, guidance)

    def _inputs(self, clip: "_Clip") -> Step:
        t = clip.scheduler.timesteps[clip.step]
        return Step(clip.step, t, clip.scheduler.scale_model_input(clip.latents, t), clip.cond, clip.context,
                    clip.real, clip.reference, self._alphas_cumprod[t])

    def _step(self, clip: "_Clip", unet) -> None:
        """One denoising step of a clip: its guidance evaluates and combines, its scheduler steps, the hooks run."""
        step = self._inputs(clip)
        eps = clip.guidance.predict(unet, step)
        self._after(clip, step, eps)

    def _after(self, clip: "_Clip", step: Step, eps: torch.Tensor) -> None:
        clip.latents = clip.scheduler.step(eps, step.timestep, clip.latents, return_dict=False)[0]
        kwargs = dict(latents=clip.latents, noise_pred=eps)
        for hook in (clip.guidance.on_step_end, self.cache.on_step_end):
            kwargs = hook(self, step.index, step.timestep, kwargs)
        clip.latents = kwargs["latents"]
        clip.step += 1

    def _decode(self, clip: "_Clip") -> torch.Tensor:
        decoded = self.vae.decode(clip.latents).clamp(-1, 1)  # every frame: the decoder's shape stays the same
        out = (decoded * (1 - self.mask) + clip.pixels * self.mask)[:clip.n]
        return ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    # -- Stream Batch ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def submit(self, faces, audio, timer: BatchTimer, tag=None) -> list[tuple]:
        """Stream Batch: the batch's clip enters the denoiser; every clip in flight takes one step in one shared UNet
        call (each at its own step, with its own timestep, scheduler and guidance state); the clips that took their
        last step are decoded. Returns [(tag, faces (n, res, res, 3) uint8)] of those, oldest first."""
        self.unet_evals = Counter()
        clip = self._prepare(faces, audio, timer, copy.deepcopy(self.scheduler), copy.deepcopy(self.guidance))
        clip.tag, clip.timer = tag, timer
        self._in_flight.append(clip)
        with timer.stage("denoise"):
            with timer.step(int(clip.scheduler.timesteps[0])):
                self._shared_step(self._in_flight)
        return self._leave(timer)

    @torch.inference_mode()
    def flush(self, timer: BatchTimer | None = None) -> list[tuple]:
        """At the stream's end: the clips still in flight take their remaining steps (shared calls) and leave. Each
        step's time goes to the timer of the clip that leaves at it (a flushed clip finishes in its own batch's
        record)."""
        out = []
        while self._in_flight:
            self.unet_evals = Counter()
            oldest = self._in_flight[0]
            clock = timer or oldest.timer
            with clock.stage("diffusion"), clock.stage("denoise"):
                with clock.step(int(oldest.scheduler.timesteps[oldest.step])):
                    self._shared_step(self._in_flight)
            clock.unet_frames += int(sum(self.unet_evals.values()))
            with clock.stage("diffusion"):
                out += self._leave(clock)
        return out

    def _leave(self, timer: BatchTimer) -> list[tuple]:
        done = [c for c in self._in_flight if c.step == self.steps]
        self._in_flight = [c for c in self._in_flight if c.step < self.steps]
        with timer.stage("decode"):
            return [(c.tag, self._decode(c)) for c in done]

    def _shared_step(self, clips: list["_Clip"]) -> None:
        """One step of every clip in flight, in as few UNet calls as their shapes allow: clips of one frame count
        and frame mask share a call (a short or partly-faced clip, run unpadded or with its own mask, gets a call
        of its own). Each clip's guidance says how many branches this step evaluates (`copies`: the trailing ones
        of its embeddings, steps.py's order), the branches of all clips run as the clips of one call — each with
        its own timestep — and each clip's guidance then combines its own. Under static shapes every call is padded to the steady number of
        branches (repeating the last), so one compiled graph serves the fill, the steady state and the flush."""
        groups: dict[tuple, list[_Clip]] = {}
        for clip in clips:
            key = (clip.calls, None if clip.real is None else id(clip.real))
            groups.setdefault(key, []).append(clip)
        unet = self.cache.call(self.unet, "full")
        for group in groups.values():
            steps = [self._inputs(c) for c in group]
            branches = [c.guidance.copies(self.steps)[s.index] for c, s in zip(group, steps)]
            samples = torch.cat([unet_input(s.latents, s.cond, k) for s, k in zip(steps, branches)])
            contexts = torch.cat([s.context[-k:] for s, k in zip(steps, branches)])
            timesteps = torch.cat([s.timestep.reshape(1).expand(k) for s, k in zip(steps, branches)])
            used = len(samples)
            if self.static_shapes and used < self._steady_branches:
                pad = self._steady_branches - used
                samples = torch.cat([samples, samples[-1:].expand(pad, *samples.shape[1:])])
                contexts = torch.cat([contexts, contexts[-1:].expand(pad, *contexts.shape[1:])])
                timesteps = torch.cat([timesteps, timesteps[-1:].expand(pad)])
            eps = self._counted(unet, group[0].calls, "full")(samples, timesteps, contexts, group[0].real)
            start = 0
            for clip, step, k in zip(group, steps, branches):
                self._after(clip, step, clip.guidance.predict(_Answer(eps[start:start + k]), step))
                start += k

    def warm_up(self) -> float:
        """One synthetic full batch before the stream (under Stream Batch: a full pipeline of clips, entered and
        flushed): compiles what is compiled and pays first-call costs (kernel selection, allocator growth). The
        random state is put back, so the stream's output does not depend on it. Returns its wall time in seconds
        (device-synchronised)."""
        rng = np.random.default_rng(0)
        faces = rng.integers(0, 256, (self.frames, self.resolution, self.resolution, 3), dtype=np.uint8)
        audio = torch.from_numpy(rng.standard_normal((self.frames, 50, 384), dtype=np.float32))
        state = self.generator.get_state()
        device_sync(self.device)
        start = time.perf_counter()
        timer = BatchTimer(-1, self.frames, warmup=True, device=self.device)
        if self.stream_batch:
            for _ in range(self.steps):
                self.submit(faces, audio, timer)
            self.flush(timer)
        else:
            self(faces, audio, timer)
        device_sync(self.device)
        elapsed = time.perf_counter() - start
        self.generator.set_state(state)
        return elapsed


@dataclass
class _Clip:
    """A batch's clip on its way through the denoiser (one batch of the plain loop; one of several in flight under
    Stream Batch, each with its own scheduler and guidance state so nothing leaks between them)."""

    n: int                        # real frames
    calls: int                    # frames per UNet/VAE call (n, or the batch size when padded)
    latents: torch.Tensor
    cond: torch.Tensor
    context: torch.Tensor
    real: torch.Tensor | None
    reference: torch.Tensor
    pixels: torch.Tensor
    scheduler: object
    guidance: object
    step: int = 0
    tag: object = None
    timer: BatchTimer | None = None


class _Answer:
    """A UNet stand-in answering a guidance variant's one call of a step with the eps the shared call computed for
    it: a variant that asks for other branches than its `copies` said, or calls twice, is an error, not a silent
    wrong answer."""

    def __init__(self, eps: torch.Tensor):
        self.eps, self.answered = eps, False

    def __call__(self, sample, timestep, context, real=None):
        if self.answered or sample.shape[0] != self.eps.shape[0]:
            raise RuntimeError(f"the guidance asked for {sample.shape[0]} branches (call {1 + self.answered}); "
                               f"Stream Batch computed {self.eps.shape[0]} in one shared call, as its copies() said")
        self.answered = True
        return self.eps
