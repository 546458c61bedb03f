"""`python -m web_gateway`: HTTP + WebSocket gateway on VOICEBUS_GATEWAY_ADDR."""

from __future__ import annotations

import uvicorn

from voicebus.grpc_server import start_process
from web_gateway.app import create_app
from web_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    start_process(settings)
    host, _, port = settings.gateway_addr.rpartition(":")
    uvicorn.run(create_app(settings), host=host or "127.0.0.1", port=int(port), log_config=None,
                access_log=False, timeout_graceful_shutdown=int(settings.shutdown_grace_seconds))


if __name__ == "__main__":
    main()
