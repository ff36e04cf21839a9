"""Feature-caching variants (`cache=`): which UNet callable each denoising step uses. `none` — every step the whole
UNet. (`deepcache`: diffusion/deepcache.py.)"""

from __future__ import annotations

from lipsync_lab.diffusion.steps import UNetCall


class NoCache:
    """`cache=none`: the whole UNet at every step."""

    def begin(self) -> None:
        pass

    def kind(self, step: int) -> str:
        return "full"

    def call(self, unet, kind: str) -> UNetCall:
        if kind != "full":
            raise ValueError(f"cache=none has no {kind!r} call")
        return unet

    def on_step_end(self, stage, step: int, timestep, kwargs: dict) -> dict:
        return kwargs
