"""Bridges from engramdb to other tools, each behind its own optional extra.

- :mod:`engramdb.integrations.mcp_server`: a Model Context Protocol server (``remember``,
  ``recall``, ``forget``, ``list``, ``stats``, ``users``) over a Pool of per-user stores or
  one store; needs ``pip install 'engramdb[mcp]'``.
- :mod:`engramdb.integrations.langchain`: ``EngramVectorStore``, a LangChain ``VectorStore``
  over one store; needs ``pip install 'engramdb[langchain]'``.
- :mod:`engramdb.integrations.langgraph`: ``EngramStore``, a LangGraph ``BaseStore`` over a
  Pool; needs ``pip install 'engramdb[langgraph]'``.

docs/integrations.md has an example of each.

Nothing here is imported by ``import engramdb``, and this package imports no extra itself:
import the submodule you need.
"""
