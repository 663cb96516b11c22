"""engramdb: an embedded, persistent memory database for LLM applications.

One memory file (a directory) per user, opened in-process like SQLite::

    import engramdb
    from engramdb.encoders import HashingEncoder

    with engramdb.open("memories/alice.engram", encoder=HashingEncoder()) as mem:
        mem.ingest("I adopted a guinea pig named Oscar.", role="user")
        hits = mem.recall("what pets do I have?", top_k=5)
"""

from engramdb import encoders, errors
from engramdb.pool import Pool
from engramdb.reembed import reembed
from engramdb.settings import Settings
from engramdb.store import Store, open  # noqa: A004 - engramdb.open is the front door
from engramdb.types import Engram, IngestResult, Kind, Occurrence, Recall, VerifyReport
from engramdb.version import __version__

__all__ = [
    "Engram",
    "IngestResult",
    "Kind",
    "Occurrence",
    "Pool",
    "Recall",
    "Settings",
    "Store",
    "VerifyReport",
    "__version__",
    "encoders",
    "errors",
    "open",
    "reembed",
]
