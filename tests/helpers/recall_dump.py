"""Open a store in a fresh process and dump recall results as JSON (for round-trip tests)."""

import json
import sys

import engramdb

store, queries = sys.argv[1], json.loads(sys.argv[2])
with engramdb.open(store) as mem:  # no encoder: rebuilt from the manifest
    out = {
        q: [[h.id, h.text, h.score] for h in mem.recall(q, top_k=5)] for q in queries
    }
    out["__refs__"] = {i: mem.get(i).refs for i in json.loads(sys.argv[3])}
    out["__count__"] = len(mem)
print(json.dumps(out))
