"""kumiho-sse-gateway: Kumiho's gRPC EventStream as Server-Sent Events."""

__version__ = "0.1.0"
