"""Embedding distance between two outputs, fetched through the upstream's /v1/embeddings.

This is the measure OpenAI's reproducibility cookbook uses: the cosine
distance between the embeddings of two answers to the same request.
"""

from __future__ import annotations

import httpx

from seedtape.proxy.audit.divergence import cosine_distance


async def embed(client: httpx.AsyncClient, upstream: str, model: str, texts: list[str],
                auth: dict[str, str]) -> list[list[float]]:
    """Embeddings of ``texts``, in order. ``auth`` holds the credential headers, used and dropped."""
    r = await client.post(f"{upstream.rstrip('/')}/v1/embeddings", json={"model": model, "input": texts},
                          headers={"content-type": "application/json", **auth}, timeout=60)
    r.raise_for_status()
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    return [d["embedding"] for d in data]


async def distance(client: httpx.AsyncClient, upstream: str, model: str, a: str, b: str,
                   auth: dict[str, str]) -> float:
    if a == b:
        return 0.0
    ea, eb = await embed(client, upstream, model, [a or " ", b or " "], auth)
    return round(cosine_distance(ea, eb), 6)
