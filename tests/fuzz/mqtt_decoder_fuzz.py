"""Coverage-guided fuzzing of the MQTT decoder and connection with atheris (libFuzzer).

Not part of the test suite (pytest does not collect this folder's files:
none is named test_*.py). The property tests in tests/protocol/test_mqtt_fuzz.py run
in every suite run; this target is for long runs by hand::

    pip install atheris
    python tests/fuzz/mqtt_decoder_fuzz.py -runs=200000          # a bounded run
    python tests/fuzz/mqtt_decoder_fuzz.py -max_total_time=600   # ten minutes
    python tests/fuzz/mqtt_decoder_fuzz.py crash-<hash>          # replay a finding

Options after the script name are libFuzzer's (-runs, -max_total_time,
-max_len, a corpus directory). A crash means an exception other than the
documented MQTTError types escaped the decoder, a Connection raised at all,
or an accepted packet did not re-encode to itself.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tidings.protocol.mqtt import Connack, Connect, Connection, Decoder, MQTTError, Version
    from tidings.protocol.mqtt.codec import decode, encode


def _check_decoder(version: Version | None, data: bytes, chunk: int) -> None:
    decoder = Decoder(version=version, max_packet_size=4096)
    try:
        for i in range(0, len(data), chunk):
            decoder.receive_data(data[i:i + chunk])
            for packet in decoder:
                v = packet.version if isinstance(packet, Connect) else decoder.version
                assert v is not None
                again = decode(encode(packet, v), None if isinstance(packet, Connect) else v)
                assert again == packet, (packet, again)
    except MQTTError:
        pass


def _check_connection(version: Version, data: bytes, chunk: int) -> None:
    conn = Connection(max_packet_size=4096)
    conn.receive_data(encode(Connect("fuzz", version), version), 0.0)
    conn.events_received()
    conn.send(Connack())
    for i in range(0, len(data), chunk):
        conn.receive_data(data[i:i + chunk], float(i))  # must never raise
        conn.events_received()
    conn.data_to_send()


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    mode = fdp.ConsumeIntInRange(0, 3)
    chunk = fdp.ConsumeIntInRange(1, 64)
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    if mode == 3:
        _check_connection(Version.V5 if chunk % 2 else Version.V311, data, chunk)
    else:
        _check_decoder((None, Version.V311, Version.V5)[mode], data, chunk)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
