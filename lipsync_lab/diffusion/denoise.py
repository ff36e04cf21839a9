"""One batch of latent-diffusion mouth inpainting, as eight timed sub-stages (design §2, reference §1, §4.4).

UNet input per frame: cat([noisy latents (4), mouth mask (1), masked-face latents (4), reference latents (4)])
= 13 channels. Mask polarity is LatentSync's: 1 = keep, 0 = regenerate. With guidance_scale > 1 the UNet batch is
doubled — [null audio (zeros) | audio] — and eps = eps_null + g·(eps_audio − eps_null). One noise map is shared by
every frame of the video (upstream's choice; the fork redrew it per batch).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from lipsync_lab.diffusion.unet import LatentSyncUNet
from lipsync_lab.diffusion.vae import LatentVAE
from lipsync_lab.timing import BatchTimer, device_sync


class LipsyncDiffusion:
    """The diffusion stage of one batch. With `static_shapes` every call runs `frames` frames: a short batch (the
    stream's last, or one where only some frames have a face) is padded by repeating its last face, and the UNet
    is told which frames are real, so compiled models never see a new shape and the real frames' output is what
    an unpadded call gives (the padding stays out of every statistic that couples frames)."""

    def __init__(self, unet: LatentSyncUNet, vae: LatentVAE, scheduler, mask: np.ndarray, *, steps: int,
                 guidance_scale: float, frames: int, static_shapes: bool = True, device="cpu",
                 dtype=torch.float32, seed: int = 0, compile_report=None):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.compile_report = compile_report  # optimize.CompileReport: what was applied to these models (build.py)
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
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

    def regenerated_region(self) -> np.ndarray:
        """(res, res) bool: where the model paints (the mouth; mask 0). Drift is measured there (compare.py)."""
        return (self.mask[0, 0] == 0).cpu().numpy()

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

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
        n = faces.shape[0]
        if n > self.frames:
            raise ValueError(f"{n} frames in a batch of at most {self.frames}")
        calls = self.frames if self.static_shapes else n  # frames per UNet/VAE call
        real = self._real[n] if self.static_shapes else None
        if calls > n:  # pad by repeating the last face (its outputs are dropped)
            keep = torch.as_tensor(np.minimum(np.arange(calls), n - 1))
            faces, audio = faces[keep.to(faces.device) if torch.is_tensor(faces) else keep.numpy()], audio[keep]
        dev, dt = self.device, self.dtype
        copies = 2 if self.do_cfg else 1

        # 1. Prepare latent variables: one noise map shared by all frames
        with timer.stage("latents"):
            latents = self.noise.expand(calls, -1, -1, -1).clone() * self.scheduler.init_noise_sigma

        # 2. Set timesteps (also resets a multistep solver's history for this batch)
        with timer.stage("timesteps"):
            self.scheduler.set_timesteps(self.steps, device=dev)

        # 3. Prepare audio embeddings: [null (zeros) | audio] under CFG, (copies, frames, 50, 384)
        with timer.stage("audio_embeds"):
            context = audio.to(dev, dt)[None]
            if self.do_cfg:
                context = torch.cat([torch.zeros_like(context), context])

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
            cond = cond[None].expand(copies, -1, -1, -1, -1)

        # 7. Denoising process
        with timer.stage("denoise"):
            for t in self.scheduler.timesteps:
                with timer.step(int(t)):
                    x = latents[None].expand(copies, -1, -1, -1, -1)
                    x = self.scheduler.scale_model_input(x, t)
                    eps = self.unet(torch.cat([x, cond], dim=2), t, context, real)
                    if self.do_cfg:
                        eps = eps[0] + self.guidance_scale * (eps[1] - eps[0])
                    else:
                        eps = eps[0]
                    latents = self.scheduler.step(eps, t, latents, return_dict=False)[0]

        # 8. Decode and post-process: composite in aligned space (only the mouth region is new)
        with timer.stage("decode"):
            decoded = self.vae.decode(latents).clamp(-1, 1)  # every frame: the decoder's shape stays the same
            out = (decoded * (1 - self.mask) + pixels * self.mask)[:n]
            out = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return out

    def warm_up(self) -> float:
        """One synthetic full batch before the stream: compiles what is compiled and pays first-call costs (kernel
        selection, allocator growth). The random state is put back, so the stream's output does not depend on it.
        Returns its wall time in seconds (device-synchronised)."""
        rng = np.random.default_rng(0)
        faces = rng.integers(0, 256, (self.frames, self.resolution, self.resolution, 3), dtype=np.uint8)
        audio = torch.from_numpy(rng.standard_normal((self.frames, 50, 384), dtype=np.float32))
        state = self.generator.get_state()
        device_sync(self.device)
        start = time.perf_counter()
        self(faces, audio, BatchTimer(-1, self.frames, warmup=True, device=self.device))
        device_sync(self.device)
        elapsed = time.perf_counter() - start
        self.generator.set_state(state)
        return elapsed
