"""Whisper-tiny encoder features as LatentSync uses them (reference §3.1).

`encode(samples)` → (T50, 5, 384): for every 20 ms step, the conv-stem output (+ positional embedding) and each of
the 4 encoder blocks' outputs, all *before* the final LayerNorm. As in LatentSync the log-mel is normalised over
the whole chunk it is computed on, cut into 3000-frame (30 s) segments, each zero-padded to 3000 frames
(the encoder's fixed window) and trimmed back to its real length after encoding.

The encoder is transformers' `WhisperEncoder` (random seeded weights, or OpenAI's tiny.pt when given); its
forward is not used because it returns only the final, layer-normed output — the stack is collected by walking
its modules in the same order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperConfig
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from lipsync_lab.audio.checkpoints import TINY, load_whisper_encoder

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160                 # 100 mel frames per second
SAMPLES_PER_STEP = 2 * HOP  # one encoder step (conv stride 2) = 20 ms = 320 samples
N_MELS = 80
WINDOW_FRAMES = 3000      # whisper's fixed 30 s window, in mel frames


class LogMel(torch.nn.Module):
    """Whisper's log-mel front end: |STFT|² (Hann 400, hop 160, centred with reflect padding, last frame dropped)
    → 80 Slaney mels → log10, then normalised: clamp to max−8, (x+4)/4. Offline (`forward`) the max is the chunk's
    own, as upstream takes it over the whole clip; a stream passes its running max to `normalize`."""

    def __init__(self):
        super().__init__()
        fb = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=N_MELS, min_frequency=0.0,
                             max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
                             mel_scale="slaney")
        self.register_buffer("filters", torch.from_numpy(fb.T.astype(np.float32)), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(n,) samples → (80, n // 160) log10 mel powers, not yet normalised."""
        # always fp32, whatever dtype the module was cast to: log10 of powers down to 1e-10 needs the range
        stft = torch.stft(audio.float(), N_FFT, HOP, window=self.window.float(), return_complex=True)
        power = stft[..., :-1].abs() ** 2
        return torch.clamp(self.filters.float() @ power, min=1e-10).log10()

    @staticmethod
    def normalize(logmel: torch.Tensor, max_value) -> torch.Tensor:
        return (torch.maximum(logmel, torch.as_tensor(max_value, dtype=logmel.dtype) - 8.0) + 4.0) / 4.0

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        logmel = self.log_mel(audio)
        return self.normalize(logmel, logmel.max())


class WhisperFeatures(torch.nn.Module):
    """samples (16 kHz mono) → (T50, 5, 384) with T50 = len(samples) // 320 (offline, upstream's way); `encode`
    runs the encoder on one normalised log-mel window (what the streaming front ends call)."""

    layers_out = 5
    dim = 384
    latentsync_layout = True  # the stem + 4 blocks, before ln_post: what LatentSync's UNets were trained on
    counted_by_torch = True  # a torch module: FlopCounterMode counts it (flops.py)

    def __init__(self, encoder: WhisperEncoder):
        super().__init__()
        self.encoder = encoder.eval()
        self.mel = LogMel()

    @classmethod
    def build(cls, checkpoint: str | None = None, seed: int = 0, device="cpu",
              dtype: torch.dtype = torch.float32) -> "WhisperFeatures":
        if checkpoint:
            model = cls(load_whisper_encoder(checkpoint))
        else:
            torch.manual_seed(seed)
            model = cls(WhisperEncoder(WhisperConfig(**TINY)))
        return model.to(device, dtype)

    def stack(self, mel: torch.Tensor, position_offset: int = 0) -> torch.Tensor:
        """mel (B, 80, n) → (B, n // 2, 5, 384): stem output and each block's output, before the final LN; encoder
        step j gets positional embedding `position_offset + j`."""
        enc = self.encoder
        x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x)).transpose(1, 2)
        x = x + enc.embed_positions.weight[position_offset:position_offset + x.shape[1]]
        outs = [x]
        for layer in enc.layers:
            x = layer(x, None)
            x = x[0] if isinstance(x, tuple) else x
            outs.append(x)
        return torch.stack(outs, dim=2)

    @torch.no_grad()
    def encode(self, mel: torch.Tensor, pad_to: int | None = WINDOW_FRAMES, position_offset: int = 0) -> torch.Tensor:
        """One normalised log-mel window (80, n) → (n // 2, 5, 384). Zero-padded to `pad_to` mel frames first, as
        upstream pads each 30-s segment (the encoder then attends over the padding too); positions start at
        `position_offset`."""
        param = next(self.encoder.parameters())
        n = mel.shape[-1]
        if pad_to is not None:
            mel = F.pad(mel, (0, pad_to - n))
        return self.stack(mel[None].to(param.device, param.dtype), position_offset)[0, : n // 2]

    @torch.no_grad()
    def forward(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Upstream's offline features of a whole clip: log-mel normalised over the clip, cut into independent 30-s
        segments, each zero-padded to 30 s and encoded, trimmed back and concatenated."""
        param = next(self.encoder.parameters())
        audio = torch.as_tensor(np.asarray(samples, np.float32)).to(param.device)
        n_steps = audio.shape[-1] // SAMPLES_PER_STEP
        mel = self.mel(audio)  # (80, n_mel), n_mel = len // 160
        out = torch.cat([self.encode(mel[:, seek:seek + WINDOW_FRAMES])
                         for seek in range(0, mel.shape[-1], WINDOW_FRAMES)])
        return out[:n_steps]
