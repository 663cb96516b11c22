"""The ``engramdb`` command line (installed as ``engramdb.cli``)."""
