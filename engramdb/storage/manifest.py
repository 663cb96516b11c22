"""MANIFEST.json: what a store is (format version, encoder spec and fingerprint, vector layout,
and, for a per-user store, whose it is).

The manifest changes rarely (creation, settings changes, index configuration); everything that
changes on each write (counters, generation, clock) lives in the catalog, inside its
transactions. It is always replaced atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engramdb.content import fingerprint_of
from engramdb.errors import CorruptStore, FormatTooNew
from engramdb.storage.fsio import atomic_write_bytes, open_regular

# 2: the turn journal (journal.bin); 3: occurrences carry caller keys; 4: a store may keep its
# turns in the journal alone, with no catalog file yet (``Manifest.catalog``), and journal
# records may remove keys (an engramdb of format 3 would misread both: it refuses the store);
# 5: a journal record's head may be compressed (engine/turnlog.py), which an engramdb of
# format 4 would take for damage.
FORMAT_VERSION = 5
MANIFEST_NAME = "MANIFEST.json"
MAGIC = "engramdb"


@dataclass
class Manifest:
    """The parsed manifest of one store."""

    encoder_spec: dict[str, Any]
    dim: int
    dtype: str  # "float32" or "float16": how vectors are kept in segments
    settings: dict[str, Any] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # The user id of a per-user store (recorded by engramdb.Pool, listed by Pool.users()); None
    # for a store made by engramdb.open alone or by an older engramdb. Optional: it needs no
    # format version of its own, and a reader that does not know the field ignores it.
    user: str | None = None
    # False: the store was made without a catalog file, and keeps its turns in journal.bin
    # alone until its first fold writes catalog.duckdb (and sets this). True (or absent, as in
    # every store before format 4): a missing catalog file is damage.
    catalog: bool = True

    @property
    def fingerprint(self) -> str:
        """The encoder fingerprint every engram id in this store is derived from."""
        return fingerprint_of(self.encoder_spec)

    def to_json(self) -> bytes:
        """Serialise to the bytes written on disk."""
        doc = {
            "magic": MAGIC,
            "format_version": self.format_version,
            "encoder": self.encoder_spec,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "dtype": self.dtype,
            "settings": self.settings,
            "index": self.index,
        }
        if self.user is not None:  # absent, not null: manifests without a user stay as they were
            doc["user"] = self.user
        if not self.catalog:
            doc["catalog"] = False
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def write(self, directory: Path, *, durable: bool = True) -> None:
        """Atomically replace the manifest in ``directory``."""
        atomic_write_bytes(directory / MANIFEST_NAME, self.to_json(), durable=durable)

    def record_catalog(self, directory: Path) -> None:
        """Record that the store in ``directory`` now has its catalog file: the manifest on
        disk gains the flag alone (this one may hold settings not to be recorded yet, such
        as a ``lexical_metadata`` recorded once the re-index under it is done)."""
        recorded = Manifest.read(directory)
        if not recorded.catalog:
            recorded.catalog = True
            recorded.write(directory)
        self.catalog = True

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """Read and validate the manifest; raise CorruptStore or FormatTooNew."""
        path = directory / MANIFEST_NAME
        try:
            fd = open_regular(path, os.O_RDONLY)  # never through a link, never a FIFO
            with os.fdopen(fd, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise CorruptStore(f"cannot read {path}: {exc}") from exc
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("magic") != MAGIC:
                raise ValueError("not an engramdb manifest")
            version = doc["format_version"]
            if not isinstance(version, int):
                raise ValueError("format_version is not an integer")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise CorruptStore(f"{path} is damaged: {exc}") from exc
        if version > FORMAT_VERSION:
            raise FormatTooNew(
                f"{directory} has format version {version}; this engramdb reads up to "
                f"{FORMAT_VERSION}"
            )
        try:
            manifest = cls(
                encoder_spec=dict(doc["encoder"]),
                dim=int(doc["dim"]),
                dtype=str(doc["dtype"]),
                settings=dict(doc.get("settings") or {}),
                index=dict(doc.get("index") or {}),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStore(f"{path} is missing a field: {exc}") from exc
        if manifest.dtype not in ("float32", "float16") or manifest.dim < 1:
            raise CorruptStore(f"{path} has an invalid vector layout ({manifest.dtype}, dim)")
        if "user" in doc:
            user = doc["user"]
            if not isinstance(user, str) or not user:
                raise CorruptStore(f"{path} has an invalid user (not a non-empty string: "
                                   f"{type(user).__name__})")
            manifest.user = user
        if "catalog" in doc:
            if not isinstance(doc["catalog"], bool):
                raise CorruptStore(f"{path} has an invalid catalog flag (not a bool)")
            manifest.catalog = doc["catalog"]
        if doc.get("fingerprint") != manifest.fingerprint:
            raise CorruptStore(f"{path}: the fingerprint does not match the encoder spec")
        return manifest
