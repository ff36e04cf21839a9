"""Every speed-up of the diffusion models, each behind its own config key, applied in one function (the
diffusion-fast habit): `optimize.channels_last`, `optimize.fuse_qkv`, `optimize.sdpa`, and the `compile` group
(`none` · `unet` · `unet_vae`, with `compile.mode` and `compile.fullgraph`).

Compilation is lazy: `torch.compile` returns at once and compiles at the first call, which the run makes before the
stream (`LipsyncDiffusion.warm_up`) and records as `compile_s`, apart from steady state. Shapes are static
(`compile.static_shapes`, every call has `batch_frames` frames), so `dynamic=False`: a shape that changes anyway recompiles
visibly (the run counts graphs compiled after warm-up) instead of silently switching to slower dynamic kernels.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
from omegaconf import DictConfig

from lipsync_lab.diffusion.unet import LatentSyncUNet
from lipsync_lab.diffusion.vae import LatentVAE

log = logging.getLogger(__name__)

COMPILE_TARGETS = ("unet", "vae")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def graphs_compiled() -> int:
    """Graphs torch.compile has compiled in this process so far (a recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@dataclass
class CompileReport:
    """What `optimize` applied, and what compiling cost: the run records it in its summary (`compile`)."""

    targets: list[str] = field(default_factory=list)  # what torch.compile wraps: unet, vae
    mode: str = "default"
    fullgraph: bool = False
    static_shapes: bool = False
    flags: dict = field(default_factory=dict)         # the optimize.* flags as applied
    compile_s: float | None = None       # the warm-up call's wall time, when something was compiled
    graphs_after_warmup: int | None = None  # graphs compiled once the warm-up batches were done (0: no recompile)
    _graphs_at_warm: int | None = field(default=None, repr=False)

    @property
    def compiled(self) -> bool:
        return bool(self.targets)

    def warm(self) -> None:
        """The warm-up is over (the warm-up call, and the stream's warm-up batches): count graphs from here."""
        if self.compiled:
            self._graphs_at_warm = graphs_compiled()

    def finish(self) -> None:
        """After the stream: how many graphs were compiled since `warm()` (None if it never came)."""
        if self.compiled and self._graphs_at_warm is not None:
            self.graphs_after_warmup = graphs_compiled() - self._graphs_at_warm

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def sdpa_backends(name: str | None) -> list | None:
    """`optimize.sdpa`: null (PyTorch chooses) or one of flash · efficient · cudnn · math."""
    if not name:
        return None
    from torch.nn.attention import SDPBackend

    table = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    if name not in table:
        raise ValueError(f"optimize.sdpa={name!r}: one of {', '.join(table)} or null")
    return [table[name]]


def optimize(unet: LatentSyncUNet, vae: LatentVAE, flags: DictConfig, compile_cfg: DictConfig) -> CompileReport:
    """Apply the flags, then compile the chosen targets, in place. Returns what was applied (the run fills in the
    compile time and the recompiles)."""
    if flags.fuse_qkv:
        unet.fuse_qkv_projections()
        vae.fuse_qkv_projections()
    if flags.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    unet.sdpa_backends = sdpa_backends(flags.sdpa)

    targets = list(compile_cfg.targets)
    unknown = set(targets) - set(COMPILE_TARGETS)
    if unknown or compile_cfg.mode not in COMPILE_MODES:
        raise ValueError(f"compile: targets {targets} / mode {compile_cfg.mode!r} not among {COMPILE_TARGETS} / "
                         f"{COMPILE_MODES}")
    kwargs = dict(fullgraph=bool(compile_cfg.fullgraph), dynamic=False,
                  mode=None if compile_cfg.mode == "default" else compile_cfg.mode)
    for name, module in (("unet", unet), ("vae", vae)):
        if name in targets:
            module.compile(**kwargs)
    if targets:
        log.info("torch.compile %s (mode %s, fullgraph %s): compiled at the warm-up call", " + ".join(targets),
                 compile_cfg.mode, compile_cfg.fullgraph)
    return CompileReport(targets=targets, mode=str(compile_cfg.mode), fullgraph=bool(compile_cfg.fullgraph),
                         static_shapes=bool(compile_cfg.static_shapes),
                         flags=dict(channels_last=bool(flags.channels_last), fuse_qkv=bool(flags.fuse_qkv),
                                    sdpa=flags.sdpa))
