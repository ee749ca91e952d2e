"""A small synchronous client for the devserver's control plane (publish, faults, stats)."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

import grpc

from gateway._proto import devserver_pb2, devserver_pb2_grpc, kumiho_pb2


class DevServerClient:
    """Talks to a running devserver; used by ``publish``, tests and benchmarks."""

    def __init__(self, target: str, timeout: float = 10.0) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = devserver_pb2_grpc.DevServerStub(self._channel)
        self._timeout = timeout

    def __enter__(self) -> DevServerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def publish(
        self,
        routing_key: str,
        kref: str,
        details: Mapping[str, str] | None = None,
        *,
        author: str = "",
        username: str = "",
        tenant: str = "",
        count: int = 1,
        without_cursor: bool = False,
    ) -> list[str]:
        """Publish ``count`` events; returns their cursors in order ("" when without_cursor)."""
        reply = self._stub.Publish(
            devserver_pb2.PublishRequest(
                routing_key=routing_key,
                kref=kref,
                details=dict(details or {}),
                author=author,
                username=username,
                tenant_id=tenant,
                count=count,
                without_cursor=without_cursor,
            ),
            timeout=self._timeout,
        )
        return list(reply.cursors)

    def set_faults(
        self,
        *,
        break_after: int = 0,
        refuse: bool = False,
        delay_ms: int = 0,
        end_after: int | None = None,
        late_headers: bool = False,
        refuse_code: str = "",
    ) -> None:
        """Replace the devserver's faults (see proto/devserver.proto)."""
        self._stub.SetFaults(
            devserver_pb2.Faults(
                break_after=break_after,
                refuse=refuse,
                delay_ms=delay_ms,
                end_after=end_after,
                late_headers=late_headers,
                refuse_code=refuse_code,
            ),
            timeout=self._timeout,
        )

    def revoke_token(self, token: str) -> None:
        self._stub.RevokeToken(devserver_pb2.RevokeTokenRequest(token=token), timeout=self._timeout)

    def stats(self) -> devserver_pb2.Stats:
        stats: devserver_pb2.Stats = self._stub.GetStats(
            devserver_pb2.StatsRequest(), timeout=self._timeout
        )
        return stats

    def recent_requests(self) -> list[kumiho_pb2.EventStreamRequest]:
        """The EventStream requests the devserver received, oldest first."""
        return [kumiho_pb2.EventStreamRequest.FromString(r) for r in self.stats().recent_requests]
