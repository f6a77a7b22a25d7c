"""API dialects: what each API surface means (paths, seeds, streams, outputs)."""
