"""Process lifecycle of sandboxed children (parent side): tier, limits, spawn, supervision, exit."""
