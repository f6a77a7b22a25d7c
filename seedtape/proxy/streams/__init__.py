"""Event streams: parsing, taping a live stream, pacing a replayed one."""
