"""Recall: the read path.

The read gate, occurrence filters, the dense search (vector index or one exact scan),
BM25 fusion with conversation context, association over links, and hydration of hits.
Reads what the engine keeps; changes nothing.
"""
