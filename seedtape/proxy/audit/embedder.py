"""Embedding distance between two outputs, fetched through the upstream's /v1/embeddings.

This is the measure OpenAI's reproducibility cookbook uses: the cosine
distance between the embeddings of two answers to the same request.
"""

from __future__ import annotations

import logging

import httpx

from seedtape.proxy.audit.divergence import cosine_distance

log = logging.getLogger("seedtape")


async def embed(
    client: httpx.AsyncClient, upstream: str, model: str, texts: list[str], auth: dict[str, str]
) -> list[list[float]]:
    """Embeddings of ``texts``, in order. ``auth`` holds the credential headers, used and dropped."""
    r = await client.post(
        f"{upstream.rstrip('/')}/v1/embeddings",
        json={"model": model, "input": texts},
        headers={"content-type": "application/json", **auth},
        timeout=60,
    )
    r.raise_for_status()
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    return [d["embedding"] for d in data]


async def distance(client: httpx.AsyncClient, upstream: str, model: str, a: str, b: str, auth: dict[str, str]) -> float:
    if a == b:
        return 0.0
    ea, eb = await embed(client, upstream, model, [a or " ", b or " "], auth)
    return round(cosine_distance(ea, eb), 6)


class Embedder:
    """The proxy's embedding distances: one HTTP client for the whole run, opened on first use."""

    def __init__(self, upstream: str, model: str) -> None:
        self.upstream, self.model = upstream, model
        self._client: httpx.AsyncClient | None = None

    async def distance(self, a: str, b: str, auth: dict[str, str]) -> float | None:
        """Cosine distance of the two texts' embeddings; None (and a warning) when the upstream cannot say."""
        if self._client is None:
            self._client = httpx.AsyncClient()
        try:
            return await distance(self._client, self.upstream, self.model, a, b, auth)
        except (httpx.HTTPError, KeyError, ValueError, TypeError) as e:
            log.warning("seedtape: no embedding distance from %s/v1/embeddings: %s", self.upstream.rstrip("/"), e)
            return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
