"""The reference upstream: a Kumiho-compatible event server for demos, development and tests."""
