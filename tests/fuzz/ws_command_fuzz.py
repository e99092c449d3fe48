"""Coverage-guided fuzzing of the WS command decoder with atheris (libFuzzer).

Not part of the test suite (pytest does not collect this folder's files:
none is named test_*.py). The property tests in tests/protocol/test_frames_fuzz.py run
in every suite run; this target is for long runs by hand::

    pip install atheris
    python tests/fuzz/ws_command_fuzz.py -runs=200000          # a bounded run
    python tests/fuzz/ws_command_fuzz.py -max_total_time=600   # ten minutes
    python tests/fuzz/ws_command_fuzz.py crash-<hash>          # replay a finding

Options after the script name are libFuzzer's (-runs, -max_total_time,
-max_len, a corpus directory). The first input byte picks the encoding (JSON
or msgpack), the rest is the frame. A crash means an exception other than
the documented ``BadRequest`` escaped ``decode_command``, or an accepted
command broke the op table (an unknown field, a wrong type, a required field
missing, an id out of range).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import msgpack
    import orjson

    from tidings.errors import BadRequest
    from tidings.protocol.frames import OPS, Encoding, _type_ok, decode_command


def test_one_input(raw: bytes) -> None:
    if not raw:
        return
    encoding = Encoding.JSON if raw[0] % 2 == 0 else Encoding.MSGPACK
    frame = raw[1:]
    try:
        cmd = decode_command(frame, encoding)
    except BadRequest as e:
        assert e.code in ("malformed", "bad_request", "unknown_op"), e.code
        return
    spec = OPS[cmd.op]
    assert cmd.id is None or (type(cmd.id) is int and 0 <= cmd.id < 2 ** 53), cmd.id
    for key, value in cmd.args.items():
        assert _type_ok(value, spec[key][0]), (key, value)
    for key, (_, required) in spec.items():
        assert not required or key in cmd.args, key


def _seeds() -> list[bytes]:
    """Valid commands of every op in both encodings (a corpus to start from)."""
    out = []
    for op, spec in OPS.items():
        obj = {"op": op, "id": 1, **{k: "x" for k, (_, req) in spec.items() if req}}
        out.append(b"\x00" + orjson.dumps(obj))
        out.append(b"\x01" + msgpack.packb(obj, use_bin_type=True))
    return out


def main() -> None:
    for seed in _seeds():  # the harness accepts its own seeds
        test_one_input(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
