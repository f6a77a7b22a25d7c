"""Embeddings (``POST /v1/embeddings``): input in, vectors out; no seed, never a stream."""

from __future__ import annotations

from seedtape.proxy.dialects.base import Dialect


class Embeddings(Dialect):
    name = "embeddings"
    suffix = "/embeddings"
    takes_seed = False
    can_stream = False
    output_group = "data"
    request_text_field = "input"

    def outputs(self, doc: dict) -> list[dict]:
        return [{"index": d.get("index"), "embedding": d.get("embedding")} for d in doc.get("data") or []]

    def claims(self, body: dict) -> bool:
        return "input" in body and "embedding" in str(body.get("model", ""))
