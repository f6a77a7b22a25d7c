"""The store and its tapes: LMDB entries, export/import, prune, unused reports."""
