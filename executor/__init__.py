"""The callback executor: runs render-farm job callbacks in sandboxed children."""

__version__ = "0.1.0"
