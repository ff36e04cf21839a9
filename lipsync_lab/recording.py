"""Where a stream's per-batch records go while it runs: `timings.parquet` (one row per batch × stage) and
`stream.parquet` (one row per batch); results.py documents their columns.

A long stream must not hold its records in memory (a day at 25 fps is ~270 000 batches, ~4 million timing rows),
and a run that dies must not lose more than a little of them. `ChunkedRecorder` keeps at most `chunk_batches`
batches in memory and writes each full chunk as a parquet file of its own under `<run>/partial/` — each part is a
complete, readable file, so a killed run loses at most the chunk in memory (a single growing parquet file would be
unreadable without its footer). `close()` joins the parts into the two result files, one row group per part,
reading one part at a time, and removes them. `MemoryRecorder` keeps everything in lists: tests and callers that
never write a run folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PARTIAL_DIR = "partial"
TIMINGS = "timings.parquet"
STREAM = "stream.parquet"

TIMINGS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("batch", pa.int32()), ("frames", pa.int32()), ("face_frames", pa.int32()),
    ("landmarks_cached", pa.int32()), ("skipped", pa.string()), ("warmup", pa.bool_()),
    ("unet_frames", pa.int32()), ("unet_frames_shallow", pa.int32()), ("stage", pa.string()),
    ("label", pa.string()), ("parent", pa.string()), ("step", pa.int32()), ("timestep", pa.int32()),
    ("seconds", pa.float64()), ("start_s", pa.float64()), ("peak_allocated_mb", pa.float64()),
    ("peak_reserved_mb", pa.float64()), ("rss_mb", pa.float64()),
])
STREAM_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("batch", pa.int32()), ("first_frame", pa.int64()), ("frames", pa.int32()),
    ("warmup", pa.bool_()), ("paced", pa.bool_()), ("arrived_s", pa.float64()), ("waited_s", pa.float64()),
    ("started_s", pa.float64()), ("finished_s", pa.float64()), ("written_s", pa.float64()), ("skipped", pa.string()),
    ("rss_mb", pa.float64()),
])


def timings_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=TIMINGS_SCHEMA)


def stream_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=STREAM_SCHEMA)


class MemoryRecorder:
    """Every record kept in memory (tests; short streams with nowhere to write)."""

    def __init__(self):
        self.rows: list[dict] = []
        self.batches: list[dict] = []

    def add(self, timings: list[dict], batch: dict) -> None:
        self.rows += timings
        self.batches.append(batch)

    def close(self) -> None:
        pass

    def timings(self) -> pd.DataFrame:
        return timings_table(self.rows).to_pandas()

    def stream(self) -> pd.DataFrame:
        return stream_table(self.batches).to_pandas()


class ChunkedRecorder:
    """Records flushed to `<run_dir>/partial/` every `chunk_batches` batches; `close()` writes the result files."""

    def __init__(self, run_dir: str | Path, chunk_batches: int = 256):
        if chunk_batches < 1:
            raise ValueError(f"chunk_batches must be at least 1, got {chunk_batches}")
        self.run_dir = Path(run_dir)
        self.parts = self.run_dir / PARTIAL_DIR
        self.chunk_batches = int(chunk_batches)
        self._rows: list[dict] = []
        self._batches: list[dict] = []
        self._n_parts = 0
        self.batches_recorded = 0

    def add(self, timings: list[dict], batch: dict) -> None:
        self._rows += timings
        self._batches.append(batch)
        self.batches_recorded += 1
        if len(self._batches) >= self.chunk_batches:
            self.flush()

    def flush(self) -> None:
        """Write the records held in memory as one more part (each part a complete parquet file)."""
        if not self._batches:
            return
        self.parts.mkdir(parents=True, exist_ok=True)
        name = f"{self._n_parts:06d}.parquet"
        pq.write_table(timings_table(self._rows), self.parts / f"timings-{name}")
        pq.write_table(stream_table(self._batches), self.parts / f"stream-{name}")
        self._n_parts += 1
        self._rows, self._batches = [], []

    def close(self) -> None:
        """Join the parts into timings.parquet and stream.parquet (one row group per part) and remove them."""
        self.flush()
        for kind, schema, final in (("timings", TIMINGS_SCHEMA, TIMINGS), ("stream", STREAM_SCHEMA, STREAM)):
            with pq.ParquetWriter(self.run_dir / final, schema) as writer:
                for part in sorted(self.parts.glob(f"{kind}-*.parquet")):
                    writer.write_table(pq.read_table(part, schema=schema))
        shutil.rmtree(self.parts, ignore_errors=True)

    def timings(self) -> pd.DataFrame:
        return pd.read_parquet(self.run_dir / TIMINGS)

    def stream(self) -> pd.DataFrame:
        return pd.read_parquet(self.run_dir / STREAM)


def read_partial(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The records a run that never finished (killed) left in its parts: (timings, stream); empty when none."""
    parts = Path(run_dir) / PARTIAL_DIR
    out = []
    for kind, schema in (("timings", TIMINGS_SCHEMA), ("stream", STREAM_SCHEMA)):
        files = sorted(parts.glob(f"{kind}-*.parquet"))
        tables = [pq.read_table(f, schema=schema) for f in files]
        out.append(pa.concat_tables(tables).to_pandas() if tables else schema.empty_table().to_pandas())
    return out[0], out[1]
