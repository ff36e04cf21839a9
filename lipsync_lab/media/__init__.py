"""Sources (file, embedded demo) yield 25-fps RGB frames and 16 kHz mono audio; sinks write or discard frames."""

from lipsync_lab.media.source import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, Batch, Source, iter_batches

__all__ = ["FPS", "SAMPLE_RATE", "SAMPLES_PER_FRAME", "Batch", "Source", "iter_batches"]
