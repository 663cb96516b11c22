"""Recall: the read path.

Occurrence filters (:mod:`~engramdb.recall.filters`), the dense search (vector index or one
exact scan, :mod:`~engramdb.recall.dense`), BM25 fusion with or without conversation context
(:mod:`~engramdb.recall.fusion`, :mod:`~engramdb.recall.fusion_context`, scoring in
:mod:`~engramdb.recall.hybrid`), association over links and hydration of hits
(:mod:`~engramdb.recall.searcher`, :mod:`~engramdb.recall.hydrate`). Reads what the engine
keeps; changes nothing.
"""
