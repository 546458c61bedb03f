"""Keep the server's status when an asyncio client's write loses the race with the call's end.

grpcio's asyncio client (1.85) turns a write that fails because the server has just ended
a client stream (an abort, an early answer) into `INTERNAL: Internal error from Core`, and
that status overwrites the one the server sent (grpc/grpc#36066). Voicebus streams audio
into STT while STT may refuse it, so the orchestrator saw INTERNAL (retryable: it marked a
healthy STT failed and told the user "unavailable") where STT had said INVALID_ARGUMENT.

`install()` replaces the client's write so that, when a write fails, it first waits briefly
for the status Core is about to deliver and raises that; only if none comes (a batch Core
rejected on its own, grpc/grpc#34148) does it fall back to grpcio's INTERNAL. Idempotent;
voicebus.grpc_client installs it for every channel the services open.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc._cython import cygrpc
from grpc.aio import _call

STATUS_WAIT_SECONDS = 1.0


async def _write(self: Any, request: Any) -> None:  # grpc.aio._call._StreamRequestMixin._write
    if self.done():
        raise asyncio.InvalidStateError(_call._RPC_ALREADY_FINISHED_DETAILS)
    if self._done_writing_flag:
        raise asyncio.InvalidStateError(_call._RPC_HALF_CLOSED_DETAILS)
    if not self._metadata_sent.is_set():
        await self._metadata_sent.wait()
        if self.done():
            await self._raise_for_status()
    serialized = _call._common.serialize(request, self._request_serializer)
    try:
        await self._cython_call.send_serialized_message(serialized)
    except cygrpc.InternalError as err:
        try:
            await asyncio.wait_for(self._cython_call.status(), STATUS_WAIT_SECONDS)
        except asyncio.TimeoutError:
            self._cython_call.set_internal_error(str(err))
        await self._raise_for_status()
    except asyncio.CancelledError:
        if not self.cancelled():
            self.cancel()
        raise


def install() -> None:
    _call._StreamRequestMixin._write = _write
