"""Audio stage: whisper-tiny encoder features (5 × 384 per 20 ms) and per-frame (50, 384) windows, streamed."""
