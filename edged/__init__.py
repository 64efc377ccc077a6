"""edged: an edge gateway daemon running camera frames through sandboxed WebAssembly functions."""

__version__ = "0.1.0"
