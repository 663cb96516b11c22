"""Derived state: what recall reads from memory, rebuilt from storage whenever in doubt.

The hot per-engram arrays (``hotstate``), the BM25 index (``lexical``), the conversation
context (``context``, ``temporal``), and the vector index (``index``, ``rotation``,
``label_states``, ``indexer``). Imports storage and the foundation, never the engine.
"""
