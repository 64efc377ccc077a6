"""The per-call result objects stay frozen dataclasses after their faster construction, and a JSON result is
read exactly as ``json.loads`` reads it (edged.wasm.abi's fast path for objects)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edged.wasm import abi
from edged.wasm.abi import Output, ResultKind, _json_object
from edged.wasm.outcome import CallResult


def test_call_result_is_a_frozen_dataclass_with_every_field_set() -> None:
    result = CallResult("f", "application/json", b"{}", {}, 1.5, 0.25, 0.75, sha256="ab")
    assert dataclasses.astuple(result) == ("f", "application/json", b"{}", {}, 1.5, 0.25, 0.75, 0.0, "ab")
    assert result == CallResult(function="f", content_type="application/json", body=b"{}", json={},
                                duration_ms=1.5, instantiate_ms=0.25, run_ms=0.75, sha256="ab")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.body = b""  # type: ignore[misc]
    assert dataclasses.replace(result, sha256="cd").sha256 == "cd"
    with pytest.raises(TypeError):
        CallResult("f", "application/json", b"{}", {}, 1.5, 0.25)  # type: ignore[call-arg]


def test_output_is_a_frozen_dataclass_with_its_defaults() -> None:
    output = Output(ResultKind.FRAME, b"\0" * 12, "", width=2, height=2, channels=3)
    assert dataclasses.astuple(output) == (ResultKind.FRAME, b"\0" * 12, "", None, 2, 2, 3)
    assert Output(ResultKind.JSON, b"{}", "application/json", json={}) == Output(
        ResultKind.JSON, b"{}", "application/json", {}, 0, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        output.width = 3  # type: ignore[misc]


JSON_CASES = [
    b"{}", b"{} ", b" {}", b'{"a": 1}\n', b'{"a": [1, 2, {"b": null}]}\r\n\t ', b"{}x", b"{", b"{}{}",
    b'{"a": NaN}', b'{"a": \xff}', b'{"a": "\xed\xa0\x80"}', b"[1]", b'"s"', b"", b'{"a": 1}\x0b',
    '{"a": 1}\u2003'.encode(), '{"é": 1}'.encode("utf-16-le"), '{"é": 1}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-8-sig"), b"{\0", b'{"k": 1, "k": 2}',
]


@pytest.fixture(params=["scanner", "fallback"])
def scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path on the decoder's scanner (an undocumented attribute), and the fallback without it."""
    assert callable(abi._SCAN)  # CPython has it; the fallback is for a Python that does not
    if request.param == "fallback":
        monkeypatch.setattr(abi, "_SCAN", None)


@pytest.mark.usefixtures("scanner")
@pytest.mark.parametrize("data", JSON_CASES)
def test_json_results_read_as_json_loads_reads_them(data: bytes) -> None:
    try:
        expected = json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        expected = None
    if not isinstance(expected, dict):
        expected = None
    assert repr(_json_object(data)) == repr(expected)
