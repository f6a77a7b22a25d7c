"""Drift audit: divergence verdicts, similarity, the audit sampler, embeddings."""
