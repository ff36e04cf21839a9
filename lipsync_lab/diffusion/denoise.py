"""One batch of latent-diffusion mouth inpainting, as eight timed sub-stages (design §2, reference §1, §4.4).

UNet input per frame: cat([noisy latents (4), mouth mask (1), masked-face latents (4), reference latents (4)])
= 13 channels. Mask polarity is LatentSync's: 1 = keep, 0 = regenerate. With guidance_scale > 1 the UNet batch is
doubled — [null audio (zeros) | audio] — and eps = eps_null + g·(eps_audio − eps_null). One noise map is shared by
every frame of the video (upstream's choice; the fork redrew it per batch).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderTiny, UNetMotionModel

from lipsync_lab.diffusion.latentsync import frames_per_call
from lipsync_lab.timing import BatchTimer


class LipsyncDiffusion:
    def __init__(self, unet, vae, scheduler, mask: np.ndarray, *, steps: int, guidance_scale: float,
                 scaling_factor: float, shift_factor: float = 0.0, device="cpu", dtype=torch.float32,
                 seed: int = 0):
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor
        self.device, self.dtype = torch.device(device), dtype
        self.resolution = mask.shape[0]
        self.latent_size = self.resolution // self.vae_downscale
        self.mask = torch.as_tensor(mask, dtype=dtype, device=self.device)[None, None]  # (1,1,res,res)
        self.mask_latent = torch.nn.functional.interpolate(self.mask, size=(self.latent_size,) * 2, mode="nearest")
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.noise = torch.randn((1, 4, self.latent_size, self.latent_size), generator=self.generator,
                                 device=self.device, dtype=torch.float32).to(dtype)

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def vae_downscale(self) -> int:
        """Both VAE kinds halve the resolution between consecutive encoder blocks."""
        cfg = self.vae.config
        blocks = cfg.encoder_block_out_channels if isinstance(self.vae, AutoencoderTiny) else cfg.block_out_channels
        return 2 ** (len(blocks) - 1)

    # -- the two VAE directions -------------------------------------------------------------------------------
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if isinstance(self.vae, AutoencoderTiny):
            latents = self.vae.encode(pixels).latents
        else:  # upstream samples the posterior (not its mode), with the pipeline's generator
            latents = self.vae.encode(pixels).latent_dist.sample(self.generator)
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample

    def unet_eps(self, x: torch.Tensor, t, context: torch.Tensor) -> torch.Tensor:
        """x (B, F, 13, h, w), context (B·F, 50, 384) → eps (B, F, 4, h, w). Each of the B clips is F frames
        (LatentSync's clip-level GroupNorm statistics and the motion modules' frame limit depend on it)."""
        b, f = x.shape[:2]
        with frames_per_call(self.unet, f):
            if isinstance(self.unet, UNetMotionModel):  # motion UNets take (B, C, F, h, w)
                out = self.unet(x.transpose(1, 2), t, encoder_hidden_states=context, return_dict=False)[0]
                return out.transpose(1, 2)
            out = self.unet(x.flatten(0, 1), t, encoder_hidden_states=context, return_dict=False)[0]
            return out.unflatten(0, (b, f))

    # -- one batch ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(self, faces: np.ndarray, audio: torch.Tensor, timer: BatchTimer) -> np.ndarray:
        """faces (N, res, res, 3) uint8 RGB, audio (N, 50, 384) → (N, res, res, 3) uint8 with a new mouth."""
        n = faces.shape[0]
        dev, dt = self.device, self.dtype
        copies = 2 if self.do_cfg else 1

        # 1. Prepare latent variables: one noise map shared by all frames
        with timer.stage("latents"):
            latents = self.noise.expand(n, -1, -1, -1).clone() * self.scheduler.init_noise_sigma

        # 2. Set timesteps (also resets a multistep solver's history for this batch)
        with timer.stage("timesteps"):
            self.scheduler.set_timesteps(self.steps, device=dev)

        # 3. Prepare audio embeddings: [null (zeros) | audio] under CFG
        with timer.stage("audio_embeds"):
            context = audio.to(dev, dt)
            if self.do_cfg:
                context = torch.cat([torch.zeros_like(context), context])

        # 4. Prepare face masks: pixels in [-1, 1], masked face = pixels · mask (mouth → 0, mid-grey)
        with timer.stage("masks"):
            pixels = torch.from_numpy(faces).to(dev, non_blocking=True).permute(0, 3, 1, 2).to(dt) / 127.5 - 1.0
            masked = pixels * self.mask

        # 5. Prepare mask latent variables: mask at latent size, VAE-encoded masked face
        with timer.stage("mask_latents"):
            mask_lat = self.mask_latent.expand(n, -1, -1, -1)
            masked_lat = self.encode(masked)

        # 6. Prepare image latent variables: the reference is the same frame, unmasked
        with timer.stage("image_latents"):
            ref_lat = self.encode(pixels)
            cond = torch.cat([mask_lat, masked_lat, ref_lat], dim=1)  # (N, 9, h, w)
            cond = cond[None].expand(copies, -1, -1, -1, -1)

        # 7. Denoising process
        with timer.stage("denoise"):
            for t in self.scheduler.timesteps:
                with timer.step(int(t)):
                    x = latents[None].expand(copies, -1, -1, -1, -1)
                    x = self.scheduler.scale_model_input(x, t)
                    eps = self.unet_eps(torch.cat([x, cond], dim=2), t, context)
                    if self.do_cfg:
                        eps = eps[0] + self.guidance_scale * (eps[1] - eps[0])
                    else:
                        eps = eps[0]
                    latents = self.scheduler.step(eps, t, latents, return_dict=False)[0]

        # 8. Decode and post-process: composite in aligned space (only the mouth region is new)
        with timer.stage("decode"):
            decoded = self.decode(latents).clamp(-1, 1)
            out = decoded * (1 - self.mask) + pixels * self.mask
            out = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            out = out.cpu().numpy()
        return out

