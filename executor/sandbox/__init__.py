"""Process lifecycle of sandboxed children (parent side): limits, spawn, supervision, exit."""
