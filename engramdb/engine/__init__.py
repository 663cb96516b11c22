"""The engine: everything that changes a store.

Opening and recovery, the one commit primitive every write goes through, the writes
themselves, the lifespan rules and links, index upkeep, garbage collection and verify.
Imports derived state, storage and the foundation, never recall or the front door.
"""
