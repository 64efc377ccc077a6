"""Host imports: ``edged.*`` (docs/ABI.md) and WASI-NN, and the hook through which extensions link.

``link`` defines the ``edged`` imports and types the extension hook, ``guard`` makes an import that never
raises, ``context`` is the call an import runs in, ``output``/``log``/``http``/``models``/``nn`` are the
imports themselves, and ``urls`` the outbound-HTTP URL policy that settings also use (it imports neither
wasmtime nor settings, so nothing here may be imported from this package's ``__init__``).
"""
