"""Tests of tidings.protocol: the sans-I/O codecs (frames, topics, MQTT packets and connection)."""
