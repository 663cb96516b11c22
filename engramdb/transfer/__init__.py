"""Export a store to a portable file and import it into a new store, losslessly.

Two formats hold the same data:

- **JSONL** (one file): a header line with everything store-wide (format version, encoder spec
  and fingerprint, dim, dtype, settings, counters, row counts), then one ``engram`` line per
  stored engram (text, the raw vector bytes in base64 with their dtype, lifespan state and
  every occurrence in ingestion order), then ``link`` lines (Hebbian edges named by the content
  ids at both ends) and ``forgotten`` lines (the forgetting log).
- **Parquet** (a small directory): ``header.json`` plus ``engrams.parquet`` (the vector as a
  fixed-size binary column, occurrences as a nested list), ``links.parquet`` and
  ``forgotten.parquet``.

Internal integers (``eid``, segment pointers) never leave the store: links and the log are
written against content ids and mapped to fresh eids on import, so a file can be imported into
any engramdb that reads its version. The vector bytes are copied exactly (float32 or float16),
so recall over an imported store returns the same scores.

Import never leaves a half-made store behind: it builds the new store in a temporary directory
next to the destination, writes through the store's own commit primitive (segment append +
fsync, then one catalog transaction per batch; ``Store.restorer``), reopens and verifies it,
and only then renames it into place.

Modules: ``formats`` (the file formats: readers and writers), ``export`` and ``importer``.
"""

from engramdb.transfer.export import export_store
from engramdb.transfer.formats import BATCH, FORMAT, FORMATS, HEADER_NAME, VERSION
from engramdb.transfer.importer import import_store

__all__ = ["BATCH", "FORMAT", "FORMATS", "HEADER_NAME", "VERSION", "export_store",
           "import_store"]
