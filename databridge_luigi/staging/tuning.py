"""Sizes and levels of the staging pipes, read at run time: tests and the bench change them here
(``monkeypatch.setattr(staging.tuning, "PART_SIZE", …)``)."""
from __future__ import annotations

# Chosen by measurement (bench/README.md "Profile", 163 MB of bench CSV, one core): zlib level 1 takes 1.25 s
# for 2.79x (3: 1.58 s, 2.88x; 6: 3.02 s, 3.13x); ISA-L level 1 takes 0.30 s for 3.02x (3: 0.43 s, 3.09x).
# Compression runs beside the source read on a 2-core machine, so its CPU time is what counts.
GZIP_LEVEL = 1
PART_SIZE = 8 * 1024 * 1024
BLOCK_SIZE = 1024 * 1024  # CSV bytes handed to the compressor (and decompressed bytes handed to a reader) at a time
QUEUE_BLOCKS = 4  # blocks waiting for the compressor / produced ahead of a reader
QUEUE_PARTS = 2  # full parts waiting for the uploader
READ_CHUNK = 256 * 1024  # compressed bytes read from the store at a time
