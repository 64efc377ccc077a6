"""Sandboxed WebAssembly functions (docs/ABI.md).

``engine`` holds the wasmtime Engine and the compiled-module cache, ``pool`` the worker threads and
admission, ``call`` one function's per-call instances, ``abi`` the ABI v1 data layout, ``host`` the host
imports. Import what you need from those modules; nothing here runs at import time.
"""
