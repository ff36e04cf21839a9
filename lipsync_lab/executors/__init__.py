"""Executors drive a stream through the pipeline: source → batches → pipeline stages → sink (design §1)."""
