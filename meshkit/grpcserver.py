"""gRPC servers: ``grpc.aio`` with the standard health service, reflection, metrics, and
one mapping from domain errors to status codes.

Health answers NOT_SERVING until the service calls :meth:`GrpcServer.set_serving`, i.e.
until it is really ready. Servicers raise :mod:`meshkit.errors` exceptions; the
interceptor turns them into status codes (INVALID_ARGUMENT carries a
``google.rpc.BadRequest`` naming every wrong field), and counts and times every call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from meshkit import errors, log
from meshkit.metrics import Metrics
from meshkit.topics import MAX_MESSAGE_BYTES

logger = log.get(__name__)

_CODES: list[tuple[type[errors.DomainError], grpc.StatusCode]] = [
    (errors.ValidationFailed, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def to_status(err: errors.DomainError) -> grpc.Status:
    """The rich gRPC status for a domain error."""
    code = next(c for cls, c in _CODES if isinstance(err, cls))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(err))
    if isinstance(err, errors.ValidationFailed):
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in err.violations
        ]))
        status.details.append(detail)
    return rpc_status.to_status(status)


def metadata(context: grpc.aio.ServicerContext, name: str) -> str:
    """The value of the call's metadata ``name``, stripped ("" if absent)."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return (value if isinstance(value, str) else value.decode(errors="replace")).strip()
    return ""


def field_violations(err: grpc.aio.AioRpcError | grpc.RpcError) -> dict[str, str]:
    """For clients and tests: the fields an INVALID_ARGUMENT error names."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    out: dict[str, str] = {}
    for detail in status.details if status else ():
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            out.update({v.field: v.description for v in br.field_violations})
    return out


class _Interceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not handler.unary_unary:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        service, metrics = self.service, self.metrics

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except errors.DomainError as err:
                status = to_status(err)
                code = status.code.name
                await context.abort(status.code, status.details, status.trailing_metadata)
            except grpc.aio.AbortError:
                code = context.code().name if context.code() else "UNKNOWN"
                raise
            except Exception:
                code = "INTERNAL"
                logger.exception("unhandled error", method=method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                metrics.grpc_requests.labels(service, method, code).inc()
                metrics.grpc_duration.labels(service, method).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class GrpcServer:
    """A ``grpc.aio`` server with health (NOT_SERVING until ready), reflection and metrics."""

    def __init__(self, *, service: str, host: str, port: int, metrics: Metrics) -> None:
        self.service = service
        self.host = host
        self.requested_port = port
        self.port = 0
        self.server = grpc.aio.server(
            interceptors=[_Interceptor(service, metrics)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names: list[str] = [health.SERVICE_NAME]
        self._metrics = metrics

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any,
            service: ServiceDescriptor) -> None:
        """Register ``servicer`` with its generated ``add_XServicer_to_server`` function."""
        register(servicer, self.server)
        self._names.append(service.full_name)

    async def start(self) -> int:
        reflection.enable_server_reflection([*self._names, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{self.host}:{self.requested_port}")
        await self.set_serving(False)
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._names[1:]]:
            await self.health.set(name, status)
        self._metrics.ready.labels(self.service).set(1 if serving else 0)

    async def stop(self, grace: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)
