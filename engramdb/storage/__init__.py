"""Storage: the files of a store and nothing derived from them.

fsync and atomic writes (``fsio``), the writer's lock file (``locking``), the manifest,
the vector segments, and the DuckDB catalog with its schema. Imports only the foundation
modules (errors, types, settings, content).
"""
