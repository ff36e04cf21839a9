"""Whisper-tiny's encoder run by CTranslate2 (the engine behind faster-whisper), on any window length.

`FasterWhisperEncoder.build(checkpoint, seed)` takes the same weights as `WhisperFeatures.build(checkpoint, seed)`
(OpenAI's tiny.pt, or random seeded ones), converts them once to a CTranslate2 Whisper model folder (cached under
`.cache/ct2/<hash of the encoder weights>`) and encodes a log-mel of up to 3000 frames *without* padding it to
30 s, so the cost follows the window (environment.md, "Whisper, offline").

What CTranslate2 gives is only the encoder's final, layer-normed output (after `ln_post`), not LatentSync's 5-layer
stack taken before it (reference §3.1). `stack()` therefore repeats that one layer 5 times to fill the UNet's
(10 steps × 5 layers = 50) audio tokens; with an official UNet checkpoint this is not LatentSync's conditioning.
An unpadded window also differs from the 30-s padded one LatentSync encodes (attention sees no padding frames).

Conversion recipe (offline, no subprocess): a transformers `WhisperForConditionalGeneration` with whisper-tiny's
full config (the decoder gets seeded random weights — CTranslate2's Whisper format needs one; only the encoder is
used) → the encoder's weights copied in → `save_pretrained` into a temporary folder → ctranslate2's
`TransformersConverter` (float32) with its tokenizer replaced by a vocabulary built here (`_vocabulary`), since
`AutoTokenizer.from_pretrained` would find no tokenizer files there and none ships with faster-whisper or
ctranslate2 → renamed into the cache. Nothing reads the network: every `from_pretrained` reads the local folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

from lipsync_lab.audio.checkpoints import TINY
from lipsync_lab.audio.whisper import N_MELS, SAMPLES_PER_STEP, WINDOW_FRAMES, LogMel, WhisperFeatures
from lipsync_lab.paths import CACHE_DIR

CT2_CACHE = CACHE_DIR / "ct2"
RECIPE = 1  # part of the cache key: bump it when the conversion below changes, so old folders are not reused
DECODER_SEED = 0

# whisper tiny (multilingual) in full: the decoder sizes and the token ids of OpenAI's tiny
N_VOCAB = 51865
TINY_FULL = dict(TINY, vocab_size=N_VOCAB, decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536,
                 max_target_positions=448, pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
                 decoder_start_token_id=50258)
N_TEXT_TOKENS = 50257     # GPT-2 byte-level BPE ids 0 … 50256
N_LANGUAGES = 99          # multilingual v1/v2 language tokens, ids 50259 … 50357
CONTROL = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
           "<|notimestamps|>")  # ids 50358 … 50363; the converter appends the 1501 timestamps <|0.00|> … <|30.00|>


def _vocabulary() -> dict[str, int]:
    """Whisper-tiny's token layout with its special tokens at their real ids, text and language tokens as
    placeholders. Enough because the encoder's output does not depend on the vocabulary at all: the converter only
    writes it to vocabulary.json (its size must match the decoder's embedding), and CTranslate2 looks up the
    special tokens (<|startoftranscript|>, <|endoftext|>, …) only to decode text — which nothing here does (the
    decoder is random anyway)."""
    tokens = [f"<|text{i}|>" for i in range(N_TEXT_TOKENS)] + ["<|endoftext|>", "<|startoftranscript|>"]
    tokens += [f"<|language{i}|>" for i in range(N_LANGUAGES)] + list(CONTROL)
    return {t: i for i, t in enumerate(tokens)}


class _Vocabulary:
    """What `TransformersConverter` uses of a tokenizer: `get_vocab()`, and `additional_special_tokens` (the
    language tokens, for language detection; none here)."""

    additional_special_tokens: list[str] = []

    def get_vocab(self) -> dict[str, int]:
        return _vocabulary()


def _ctranslate2():
    try:
        import ctranslate2
    except ImportError as e:
        raise ImportError("the faster_whisper audio encoder needs ctranslate2: pip install 'lipsync_lab[audio]' "
                          "(faster-whisper brings it)") from e
    return ctranslate2


def weights_key(encoder_state: dict[str, torch.Tensor]) -> str:
    """A hash of the encoder's weights (names, shapes, float32 values) and the recipe version."""
    h = hashlib.sha256(f"lipsync_lab ct2 whisper recipe {RECIPE}".encode())
    for name in sorted(encoder_state):
        t = encoder_state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name} {tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:20]


def _transformers_model(encoder_state: dict[str, torch.Tensor]) -> WhisperForConditionalGeneration:
    with torch.random.fork_rng(devices=[]):  # a seeded decoder, without moving the caller's global RNG
        torch.manual_seed(DECODER_SEED)
        model = WhisperForConditionalGeneration(WhisperConfig(**TINY_FULL)).eval()
    model.model.encoder.load_state_dict(encoder_state, strict=True)
    # An explicit generation config (_from_model_config=False, as whisper-tiny's own): older transformers refuse to
    # save one derived from the model config; its suppress lists become CTranslate2's suppress_ids(_begin).
    model.generation_config = GenerationConfig(
        decoder_start_token_id=50258, bos_token_id=50257, eos_token_id=50257, pad_token_id=50257,
        suppress_tokens=[], begin_suppress_tokens=[220, 50257], no_timestamps_token_id=50363, max_length=448)
    return model


def convert(encoder_state: dict[str, torch.Tensor], folder: Path | None = None) -> Path:
    """transformers `WhisperEncoder` weights (its `state_dict()` keys) → a CTranslate2 Whisper model folder
    `folder/<weights_key>` (default folder: `.cache/ct2`), converted at first use and reused after. Written
    atomically: converted into a temporary folder beside it, then renamed (a concurrent conversion of the same
    weights loses the race harmlessly)."""
    folder = Path(folder) if folder is not None else CT2_CACHE
    target = folder / weights_key(encoder_state)
    if target.is_dir():
        return target
    ctranslate2 = _ctranslate2()
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return _Vocabulary()

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".converting-") as tmp:
        hf, ct2 = Path(tmp) / "transformers", Path(tmp) / "ct2"
        _transformers_model(encoder_state).save_pretrained(hf)
        Converter(str(hf)).convert(str(ct2), quantization="float32")
        (ct2 / "lipsync_lab.txt").write_text(
            f"whisper tiny encoder {target.name}: converted by lipsync_lab (recipe {RECIPE}, ctranslate2 "
            f"{ctranslate2.__version__}); random decoder, placeholder text vocabulary: encode() only\n")
        try:
            os.rename(ct2, target)
        except OSError:
            if not target.is_dir():
                raise
    return target


def resolve_device(device: str | torch.device) -> tuple[str, int]:
    """cpu, cuda, cuda:N (a torch.device too) or auto (cuda when CTranslate2 sees a GPU) → CTranslate2's
    (device, device_index)."""
    name = str(device)
    if name == "auto":
        name = "cuda" if _ctranslate2().get_cuda_device_count() > 0 else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or not (index == "" or index.isdigit()):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, not {name!r}")
    return kind, int(index or 0)


class FasterWhisperEncoder:
    """samples (16 kHz mono) → (T50, 5, 384), T50 = len(samples) // 320, with whisper-tiny's encoder in
    CTranslate2; see the module docstring for what the 5 layers are."""

    layers_out = 5
    dim = 384
    latentsync_layout = False  # one layer (after ln_post) repeated, not the stack LatentSync's UNets were trained on
    counted_by_torch = False  # CTranslate2 runs outside torch: FlopCounterMode cannot see it (flops.py)

    def __init__(self, model, folder: Path, device: torch.device, dtype: torch.dtype = torch.float32):
        self.model = model      # ctranslate2.models.Whisper
        self.folder = folder
        self.device = device    # where `encode` returns its features (final_layer/stack: always the CPU)
        self.dtype = dtype
        self.mel = LogMel()

    @classmethod
    def build(cls, checkpoint: str | None = None, seed: int = 0, device: str | torch.device = "cpu",
              compute_type: str = "default", threads: int = 0, cache_dir: Path | None = None,
              dtype: torch.dtype | None = None) -> "FasterWhisperEncoder":
        """The weights of `WhisperFeatures.build(checkpoint, seed)`. device: cpu, cuda, cuda:N or auto (cuda when
        CTranslate2 sees a GPU); compute_type: CTranslate2's (default: the stored float32 — or, on cuda, float16 /
        bfloat16 when that is `dtype`, the pipeline's); threads: CTranslate2's intra_threads (0: its default);
        cache_dir: where converted models live (default .cache/ct2)."""
        state = WhisperFeatures.build(checkpoint, seed).encoder.state_dict()
        folder = convert(state, cache_dir)
        kind, index = resolve_device(device)
        if compute_type == "default" and kind == "cuda" and dtype in (torch.float16, torch.bfloat16):
            compute_type = str(dtype).removeprefix("torch.")
        model = _ctranslate2().models.Whisper(str(folder), device=kind, device_index=index,
                                              compute_type=compute_type, intra_threads=threads)
        return cls(model, folder, torch.device(kind, index) if kind == "cuda" else torch.device("cpu"),
                   dtype or torch.float32)

    @torch.no_grad()
    def final_layer(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (80, n) float32, normalised as `LogMel` makes it, n ≤ 3000 → (n // 2, 384) float32 on the CPU: the
        encoder's final output, after its LayerNorm, for exactly this window (no padding to 30 s)."""
        ctranslate2 = _ctranslate2()
        mel = torch.as_tensor(mel)
        if mel.ndim != 2 or mel.shape[0] != N_MELS:
            raise ValueError(f"expected a log-mel of shape ({N_MELS}, n_frames), got {tuple(mel.shape)}")
        n = mel.shape[1]
        if n > WINDOW_FRAMES:
            raise ValueError(f"{n} mel frames: whisper's encoder takes at most {WINDOW_FRAMES} (30 s) per window")
        steps = n // 2
        if steps == 0:
            return torch.zeros(0, self.dim)
        features = np.ascontiguousarray(mel.detach().to("cpu", torch.float32).numpy()[None])
        out = self.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True)
        if out.dtype != ctranslate2.DataType.float32:  # float16/bfloat16 compute types
            out = out.to(ctranslate2.DataType.float32)
        return torch.from_numpy(np.array(out)[0, :steps])

    def stack(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (80, n) → (n // 2, 5, 384): the final (layer-normed) layer repeated 5 times, in place of
        LatentSync's stack of the stem and 4 block outputs before the final LayerNorm. Fed to the UNet, each
        frame's 50 audio tokens are its 10 steps × the same vector 5 times. With an official UNet checkpoint
        (trained on the pre-LN stack) this is NOT LatentSync's conditioning: it is for speed measurements, and
        for UNets trained on these features."""
        return self.final_layer(mel).unsqueeze(1).repeat(1, self.layers_out, 1)

    def encode(self, mel: torch.Tensor, pad_to: int | None = None, position_offset: int = 0) -> torch.Tensor:
        """What the streaming front ends call (lipsync_lab/audio/features.py), as `WhisperFeatures.encode`: one
        normalised log-mel window (80, n) → (n // 2, 5, 384) (`stack`), on `device` in `dtype`. pad_to: zero-pad
        the mel to that many frames first (upstream's 30-s segments); None encodes the window as it is (the point of
        this encoder). CTranslate2 gives step j positional embedding j: a window cannot start at another position."""
        if position_offset:
            raise ValueError("CTranslate2's whisper encoder starts every window at position 0 "
                             f"(position_offset {position_offset}): use window positions")
        n = mel.shape[-1]
        if pad_to is not None and pad_to > n:
            mel = F.pad(mel, (0, pad_to - n))
        return self.stack(mel)[: n // 2].to(self.device, self.dtype)

    @torch.no_grad()
    def __call__(self, samples: np.ndarray | torch.Tensor) -> torch.Tensor:
        """samples → (T50, 5, 384) like `WhisperFeatures`: log-mel normalised over the whole chunk, cut into
        3000-frame segments, but each encoded at its own length (no padding)."""
        audio = torch.as_tensor(np.asarray(samples, np.float32))
        n_steps = audio.shape[-1] // SAMPLES_PER_STEP
        mel = self.mel(audio)
        feats = [self.stack(mel[:, seek:seek + WINDOW_FRAMES]) for seek in range(0, mel.shape[-1], WINDOW_FRAMES)]
        out = torch.cat(feats) if feats else torch.zeros(0, self.layers_out, self.dim)
        return out[:n_steps].to(self.device, self.dtype)
