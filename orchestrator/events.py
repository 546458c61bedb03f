"""Turn events on NATS: `voicebus.turn.<conversation>.<stage>`, captured by JetStream.

Publishing only enqueues (voicebus.bus): a turn never waits for NATS. Each event carries
`Nats-Msg-Id` (JetStream drops a retried duplicate) and the `traceparent` of its publish
span, so a consumer's span joins the turn's trace.
"""

from __future__ import annotations

import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import StreamConfig

from voicebus.bus import TURN_STREAM, TURN_SUBJECTS, EventBus, turn_subject
from voicebus.names import label
from voicebus.telemetry import publish_span
from voicebus.v1 import assistant_pb2, common_pb2, events_pb2



class TurnEvents:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        bus.on_connect(self._declare_stream)

    async def _declare_stream(self) -> None:
        assert self.bus.nc is not None
        js = self.bus.nc.jetstream()
        # Replicas from VOICEBUS_NATS_STREAM_REPLICAS (R3 on a 3-node cluster); an update moves a
        # stream made with another count to this one. duplicate_window: a publish retried with the
        # same Nats-Msg-Id within it is stored once.
        config = StreamConfig(name=TURN_STREAM, subjects=[TURN_SUBJECTS], max_age=30 * 24 * 3600.0,
                              duplicate_window=120.0, num_replicas=self.bus.settings.nats_stream_replicas)
        try:
            await js.stream_info(TURN_STREAM)
            await js.update_stream(config)
        except Exception:  # noqa: BLE001 - not there yet
            await js.add_stream(config)

    def publish(self, event_type: int, turn: assistant_pb2.Turn, text: str = "",
                stage: int = common_pb2.STAGE_UNSPECIFIED, with_turn: bool = False) -> None:
        now = Timestamp()
        now.GetCurrentTime()
        event = events_pb2.TurnEvent(event_id=uuid.uuid4().hex, type=event_type, conversation_id=turn.conversation_id,
                                     turn_id=turn.turn_id, time=now, trace_id=turn.trace_id, stage=stage, text=text)
        if with_turn:
            event.turn.CopyFrom(turn)
        stage_name = label(events_pb2.TurnEventType, event_type)
        subject = turn_subject(turn.conversation_id, stage_name)
        with publish_span(subject, f"turn.{stage_name}", {"Nats-Msg-Id": event.event_id}) as headers:
            self.bus.publish(subject, event.SerializeToString(), headers=headers, jetstream=True)
