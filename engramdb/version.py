"""The engramdb release, in one place: the package, exports, reports and the CLI name it."""

__version__ = "0.1.0"
