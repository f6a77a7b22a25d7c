"""Seed policy: give every seedable request a seed, never override the client's."""

from __future__ import annotations

import json
from dataclasses import dataclass

DEFAULT_SEED = 1234


@dataclass(frozen=True)
class SeedPolicy:
    seed: int = DEFAULT_SEED
    inject: bool = True

    def apply(self, body: dict) -> tuple[dict, str]:
        """Return the body to forward and the ``seedtape-seed`` header value.

        The header says the seed and where it came from: ``client``, ``injected``,
        or ``none`` (no seed, injection off).
        """
        if "seed" in body and body["seed"] is not None:
            return body, f"{json.dumps(body['seed'])}; client"  # json: no raw control chars in a header
        if not self.inject:
            if "seed" in body:  # seed: null means no seed: forward (and key) it as absent
                body = {k: v for k, v in body.items() if k != "seed"}
            return body, "none"
        return {**body, "seed": self.seed}, f"{self.seed}; injected"
