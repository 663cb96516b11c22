"""Bridges from engramdb to other tools, each behind its own optional extra.

- :mod:`engramdb.integrations.mcp_server`: a Model Context Protocol server (``remember``,
  ``recall``, ``forget``, ``stats``) over a Pool of per-user stores or one store; needs
  ``pip install 'engramdb[mcp]'`` (docs/integrations.md).

Nothing here is imported by ``import engramdb``, and this package imports no extra itself:
import the submodule you need.
"""
