"""Tests of tidings.edges: the WebSocket edge, the MQTT broker and the HTTP API
(real clients on real sockets)."""
