"""Guidance variants (`guidance=`): which UNet branches a denoising step evaluates, and how they combine.

Notation: g = `guidance_scale`; ε_a, ε_∅ the UNet's noise predictions on the audio and on the null (zero) audio;
x_t the step's noisy latents as the model sees them (`Step.latents`: for DDIM and DPM-Solver++ these are the
variance-preserving x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, which the residual formulas below assume); ᾱ_t the scheduler's
alphas_cumprod at the step's timestep (`Step.alpha_bar`, a device tensor: no value is read back to the host).

- `cfg` — classifier-free guidance as LatentSync runs it: every step evaluates the UNet on two branches, the null
  audio and the audio, in one call of 2 × F frames, and eps = ε_∅ + g·(ε_a − ε_∅).
- `residual_self` — StreamDiffusion's Residual CFG, self-negative (arXiv 2312.12491): one branch (the audio) a step;
  the null branch is replaced by a virtual residual noise pointing from x_t to the reference latents (`ResidualSelf`).
- `residual_once` — Residual CFG, one-time negative: the null branch at the first step only (2 branches there, 1
  after); its x_0 prediction stands in for the reference in the virtual residual noise (`ResidualOnce`).
- `cfg_cache` — FasterCache's CFG-Cache, simplified (arXiv 2410.19355): full CFG every `interval` steps, the audio
  branch plus the cached guidance difference on the others (`CFGCache`).

With g ≤ 1 there is nothing to guide: every variant evaluates one branch (the audio) and eps = ε_a — the same
prediction, bit for bit, whichever variant is chosen.

Each variant's per-batch state (a residual or difference kept across steps) lives only from its `begin()` to the end
of that batch, and is a fresh tensor computed from the UNet's output, never the output itself: a compiled UNet under
CUDA graphs overwrites its output buffers at the next replay.
"""

from __future__ import annotations

import torch

from lipsync_lab.diffusion.steps import Step, UNetCall, unet_input


def _null_and_audio(audio: torch.Tensor) -> torch.Tensor:
    """(2, F, 50, 384): the null branch (zeros: LatentSync's unconditional audio) beside the audio."""
    context = audio[None]
    return torch.cat([torch.zeros_like(context), context])


def _call(unet: UNetCall, step: Step, context: torch.Tensor) -> torch.Tensor:
    """The UNet on the branches of `context` (clips, F, 50, 384) → (clips, F, 4, h, w)."""
    return unet(unet_input(step.latents, step.cond, len(context)), step.timestep, context, step.real)


def _sqrt_alpha_beta(alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1 − ᾱ_t)) as 0-d tensors on ᾱ's device (fp32: a 0-d operand keeps the latents' dtype in the
    products that follow)."""
    return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()


class _Guidance:
    """What every option shares: the scale (guided when > 1), [null audio | audio] embeddings when guided, no
    per-batch state, a step-end hook that changes nothing. An option overrides what it does differently."""

    def __init__(self, scale: float = 1.5):
        self.scale = float(scale)

    @property
    def guided(self) -> bool:
        return self.scale > 1.0

    def embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        return _null_and_audio(audio) if self.guided else audio[None]

    def begin(self) -> None:
        pass

    def on_step_end(self, stage, step: int, timestep, kwargs: dict) -> dict:
        return kwargs


class CFG(_Guidance):
    """`guidance=cfg`: eps = ε_∅ + g·(ε_a − ε_∅), both branches every step (see the module's docstring)."""

    def predict(self, unet: UNetCall, step: Step) -> torch.Tensor:
        eps = _call(unet, step, step.context)
        return eps[0] + self.scale * (eps[1] - eps[0]) if self.guided else eps[0]

    def copies(self, steps: int) -> list[int]:
        return [2 if self.guided else 1] * steps


class ResidualSelf(_Guidance):
    """`guidance=residual_self`: StreamDiffusion's self-negative Residual CFG — one UNet branch a step.

        ε'  = (x_t − √ᾱ_t · x_ref) / √(1 − ᾱ_t)          the virtual residual noise
        eps = δ·ε' + g·(ε_a − δ·ε')                       δ = `delta` (1.0: the paper's plain form)

    ε' is the noise that would take x_t exactly back to x_ref at this step: the paper's virtual negative condition
    c̄', whose prediction reproduces the input latent x_0. *Choice:* x_0 is `Step.reference`, the reference face's
    VAE latents (scaled as the UNet's latents are). In LatentSync's self-reconstruction that is the very frame whose
    mouth is regenerated, unmasked: what the model would keep if the audio did not move the mouth — the role the
    input image plays in StreamDiffusion's img2img. Guidance thus pushes the mouth away from the reference's mouth
    and along the audio's prediction, where CFG pushes it away from the null audio's. (The masked-face latents are
    the other candidate, but their mouth is blanked: a residual toward them would push away from a grey hole, not
    from the still mouth.) δ < 1 softens the virtual residual, the paper's "magnitude moderation".
    """

    def __init__(self, scale: float = 1.5, delta: float = 1.0):
        super().__init__(scale)
        self.delta = float(delta)

    def embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        return audio[None]  # no null branch at all

    def predict(self, unet: UNetCall, step: Step) -> torch.Tensor:
        eps_audio = _call(unet, step, step.context)[0]
        if not self.guided:
            return eps_audio
        sqrt_alpha, sqrt_beta = _sqrt_alpha_beta(step.alpha_bar)
        negative = self.delta * ((step.latents - sqrt_alpha * step.reference) / sqrt_beta)
        return negative + self.scale * (eps_audio - negative)

    def copies(self, steps: int) -> list[int]:
        return [1] * steps


class ResidualOnce(_Guidance):
    """`guidance=residual_once`: StreamDiffusion's one-time-negative Residual CFG — the null branch at the first
    step only (2 branches there, 1 at every later step).

        step 0:   ε_∅ evaluated beside ε_a;  x̂_∅ = (x_t0 − √(1 − ᾱ_t0) · ε_∅) / √ᾱ_t0    kept for the batch
                  eps = δ·ε_∅ + g·(ε_a − δ·ε_∅)
        step i>0: ε'  = (x_ti − √ᾱ_ti · x̂_∅) / √(1 − ᾱ_ti)
                  eps = δ·ε' + g·(ε_a − δ·ε')

    x̂_∅ is the clean latent the null audio predicts at the first step: the residual then points, at every step, from
    x_t to where the unconditioned model was heading, so guidance steers away from the real negative condition (the
    paper's point over the self-negative form) at the cost of one extra branch per batch. At step 0 the paper's ε'
    built from x̂_∅ is ε_∅ itself (substitute x̂_∅), so ε_∅ is used directly: with δ = 1, step 0 is CFG's step 0 bit
    for bit. x̂_∅ is reset by `begin()` (each batch has its own first step).
    """

    def __init__(self, scale: float = 1.5, delta: float = 1.0):
        super().__init__(scale)
        self.delta = float(delta)
        self._x0_null: torch.Tensor | None = None

    def begin(self) -> None:
        self._x0_null = None

    def predict(self, unet: UNetCall, step: Step) -> torch.Tensor:
        if not self.guided:
            return _call(unet, step, step.context)[0]
        sqrt_alpha, sqrt_beta = _sqrt_alpha_beta(step.alpha_bar)
        if step.index == 0:
            eps = _call(unet, step, step.context)
            eps_null, eps_audio = eps[0], eps[1]
            self._x0_null = (step.latents - sqrt_beta * eps_null) / sqrt_alpha
            negative = self.delta * eps_null
        else:
            if self._x0_null is None:
                raise RuntimeError("guidance=residual_once: a later step before this batch's first (begin() resets "
                                   "the one-time negative)")
            eps_audio = _call(unet, step, step.context[1:])[0]
            negative = self.delta * ((step.latents - sqrt_alpha * self._x0_null) / sqrt_beta)
        return negative + self.scale * (eps_audio - negative)

    def copies(self, steps: int) -> list[int]:
        return [2 if self.guided and i == 0 else 1 for i in range(steps)]


class CFGCache(_Guidance):
    """`guidance=cfg_cache`: FasterCache's CFG-Cache, simplified — full CFG every `interval` steps (steps 0,
    interval, 2·interval, …), the audio branch alone on the others with the guidance difference cached at the last
    full step:

        full step:   D = ε_a − ε_∅ (kept);   eps = ε_∅ + g·D                      (= cfg's step, bit for bit)
        other step:  eps = ε_a + (g − 1)·D                                        (cfg with ε_∅ ≈ ε_a − D)

    Simplified relative to the paper: FasterCache keeps the cond/uncond residual in the frequency domain, split into
    low- and high-frequency parts re-weighted over the sampling (low frequencies emphasised early, high ones late),
    and reuses it only in a late window of the schedule (about every 5th step computed in full there); here the
    difference is one eps-space tensor reused as it is, from the first step on, every `interval` steps — with the
    seed's 3 steps there is no late window to speak of. `interval=1` is plain cfg. D is reset by `begin()`.
    """

    def __init__(self, scale: float = 1.5, interval: int = 2):
        super().__init__(scale)
        self.interval = int(interval)
        if self.interval < 1:
            raise ValueError(f"guidance=cfg_cache: interval must be ≥ 1, not {interval}")
        self._diff: torch.Tensor | None = None

    def _full(self, index: int) -> bool:
        return index % self.interval == 0

    def begin(self) -> None:
        self._diff = None

    def predict(self, unet: UNetCall, step: Step) -> torch.Tensor:
        if not self.guided:
            return _call(unet, step, step.context)[0]
        if self._full(step.index):
            eps = _call(unet, step, step.context)
            self._diff = eps[1] - eps[0]
            return eps[0] + self.scale * self._diff
        if self._diff is None:
            raise RuntimeError("guidance=cfg_cache: a cached step before this batch's first full step (begin() "
                               "resets the cached difference)")
        eps_audio = _call(unet, step, step.context[1:])[0]
        return eps_audio + (self.scale - 1.0) * self._diff

    def copies(self, steps: int) -> list[int]:
        return [2 if self.guided and self._full(i) else 1 for i in range(steps)]
