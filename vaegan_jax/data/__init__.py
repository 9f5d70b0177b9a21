"""Streaming input: random-access sources (sources.py) and the grain pipeline
that turns them into global sharded batches (pipeline.py)."""
