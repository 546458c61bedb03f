"""`voicebus rpc`: grpcurl's everyday uses with what the virtualenv already has.

    voicebus rpc 127.0.0.1:50050 list                          # services, from server reflection
    voicebus rpc 127.0.0.1:50050 describe voicebus.v1.Assistant
    voicebus rpc 127.0.0.1:50050 call voicebus.v1.Assistant/ListConversations '{"page_size": 2}'

Messages are JSON (protobuf's JSON mapping), one reply per line; the bearer token of
VOICEBUS_AUTH_TOKEN and the TLS settings go along as for every Voicebus client. A method that
takes a stream of requests (Converse, StreamingTranscribe, …) is not for a command line: use
`voicebus talk`, or a client in clients/.
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from voicebus.config import CommonSettings
from voicebus.grpc_client import channel_credentials


class RpcError(Exception):
    """A usage or input mistake, told in one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("address", help="host:port of a Voicebus service")
    parser.add_argument("verb", choices=("list", "describe", "call"))
    parser.add_argument("target", nargs="?", default="", help="service (describe) or Service/Method (call)")
    parser.add_argument("request", nargs="?", default="{}", help="the request as JSON (call; default {})")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before giving up (default 30)")


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamStreamClientInterceptor):
    """The token on every call, reflection's included (only health is open)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _details(self, details):  # noqa: ANN001, ANN202
        return details._replace(metadata=[*(details.metadata or ()), self.header])

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_stream(self, continuation, details, requests):  # noqa: ANN001, ANN201
        return continuation(self._details(details), requests)


def _channel(address: str, settings: CommonSettings) -> tuple[grpc.Channel, grpc.Channel]:
    """(the channel, the same with the bearer token on every call)."""
    credentials = channel_credentials(settings)
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    token = settings.token()
    return channel, grpc.intercept_channel(channel, _Bearer(token)) if token else channel


def _method(pool: DescriptorPool, target: str) -> MethodDescriptor:
    service_name, _, method_name = target.replace("/", ".").rpartition(".")
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        raise RpcError(f"no service {service_name or target!r} here (see: list)") from None
    method = service.methods_by_name.get(method_name)
    if method is None:
        raise RpcError(f"{service_name} has no method {method_name!r}; it has {', '.join(service.methods_by_name)}")
    return method


def _describe(pool: DescriptorPool, name: str) -> str:
    try:
        service = pool.FindServiceByName(name)
    except KeyError:
        raise RpcError(f"no service {name!r} here (see: list)") from None
    lines = [f"service {service.full_name}"]
    for m in service.methods:
        request = ("stream " if m.client_streaming else "") + m.input_type.full_name
        reply = ("stream " if m.server_streaming else "") + m.output_type.full_name
        lines.append(f"  rpc {m.name}({request}) returns ({reply})")
    return "\n".join(lines)


def _call(channel: grpc.Channel, method: MethodDescriptor, request_json: str, timeout: float) -> None:
    if method.client_streaming:
        raise RpcError(f"{method.full_name} takes a stream of requests: use `voicebus talk` or a client in clients/")
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    try:
        request = json_format.Parse(request_json, request_class())
    except json_format.ParseError as exc:
        raise RpcError(f"the request is not a {method.input_type.full_name} in JSON: {exc}") from None
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = channel.unary_stream if method.server_streaming else channel.unary_unary
    stub = kind(path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=reply_class.FromString)
    replies = stub(request, timeout=timeout)
    for reply in (replies if method.server_streaming else [replies]):
        print(json.dumps(json_format.MessageToDict(reply), ensure_ascii=False))


def run(args: argparse.Namespace) -> int:
    settings = CommonSettings()
    raw, channel = _channel(args.address, settings)
    try:
        with raw:
            try:
                grpc.channel_ready_future(raw).result(timeout=min(args.timeout, 5.0))
            except grpc.FutureTimeoutError:
                raise RpcError(f"nothing answers at {args.address}") from None
            database = ProtoReflectionDescriptorDatabase(channel)
            pool = DescriptorPool(database)
            if args.verb == "list":
                print("\n".join(sorted(database.get_services())))
            elif args.verb == "describe":
                print(_describe(pool, args.target))
            else:
                if not args.target:
                    raise RpcError("call needs Service/Method, e.g. voicebus.v1.Assistant/ListConversations")
                _call(channel, _method(pool, args.target), args.request, args.timeout)
        return 0
    except RpcError as exc:
        print(f"voicebus rpc: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        details = (exc.details() or "").splitlines()[0] if exc.details() else ""  # type: ignore[attr-defined]
        print(f"voicebus rpc: {exc.code().name}: {details}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
