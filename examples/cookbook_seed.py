"""OpenAI's reproducibility-cookbook experiment, measured by seedtape.

The cookbook sends one prompt five times without a seed and five times with a
fixed seed, and compares the average distance between the answers. Here
seedtape does the measuring: each variant is recorded once through a seedtape
proxy (without seed injection, then with a fixed seed), and `seedtape audit`
re-sends it N times and reports how the samples differ: share identical to the
recording, mean pairwise token similarity and, with --embedding-model, mean
pairwise cosine distance of their embeddings.

    python examples/cookbook_seed.py --upstream https://api.openai.com --embedding-model text-embedding-3-small
    python examples/cookbook_seed.py --demo     # offline, against tests/fake_upstream.py (noisy without a seed)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = "Write a short story about a robot that learns to paint, in three sentences."


def seedtape(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seedtape", *args], capture_output=True, text=True)


def measure(upstream: str, store: str, serve_args: list[str], samples: int, embedding_model: str | None, model: str) -> dict:
    import openai
    from proxyproc import ProxyProcess

    with ProxyProcess("--upstream", upstream, "--store", store, "--mode", "record", *serve_args) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key=os.environ.get("OPENAI_API_KEY", "sk-demo"))
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], temperature=1)
    out = Path(store) / "audit.json"
    args = ["audit", "--store", store, "--upstream", upstream, "--repeats", str(samples), "--json", str(out)]
    if embedding_model:
        args += ["--embedding-model", embedding_model]
    r = seedtape(*args)
    if r.returncode not in (0, 1):
        raise SystemExit(f"seedtape audit failed: {r.stderr}")
    [req] = json.loads(out.read_text())["requests"]
    return req


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default=None, help="the API to measure (default with --demo: a local fake)")
    p.add_argument("--demo", action="store_true", help="run offline against tests/fake_upstream.py")
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--embedding-model", default=None)
    a = p.parse_args()
    fake = None
    if a.demo or not a.upstream:
        from fake_upstream import FakeUpstream

        fake = FakeUpstream().start()
        fake.noise = "unseeded"  # like the real API, only more so: answers vary without a seed
        a.upstream = fake.url
        a.embedding_model = a.embedding_model or "emb-fake"
    try:
        rows = []
        for label, serve_args in (("without seed", ["--no-seed-injection"]), (f"seed={a.seed}", ["--seed", str(a.seed)])):
            with tempfile.TemporaryDirectory() as store:
                rows.append((label, measure(a.upstream, store, serve_args, a.samples, a.embedding_model, a.model)))
    finally:
        if fake:
            fake.stop()
    print(f"{a.samples} samples of one prompt through seedtape ({a.upstream})")
    print(f"{'variant':<14} {'identical':>9} {'token sim':>10} {'emb dist':>9}  fingerprints")
    for label, r in rows:
        dist = r["mean_pairwise_embedding_distance"]
        print(f"{label:<14} {r['identical_share']:>9.0%} {r['mean_pairwise_similarity']:>10.3f} "
              f"{'-' if dist is None else f'{dist:>9.4f}'}  {','.join(r['fingerprints_seen'])}")


if __name__ == "__main__":
    main()
