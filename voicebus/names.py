"""Protobuf enum values as the short lowercase names used in JSON, logs, metrics and NATS subjects.

`label(common_pb2.Stage, common_pb2.STAGE_LLM)` is "llm"; `label(assistant_pb2.TurnOutcome,
TURN_OUTCOME_NO_SPEECH)` is "no_speech". The prefix is the enum's own name in SCREAMING_SNAKE
case (`Stage` -> `STAGE_`, `TurnEventType` -> `TURN_EVENT_TYPE_`), so every enum of the contract
follows the same rule and there is one place that knows it.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any


@cache
def _prefix(enum_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def label(enum: Any, value: int) -> str:
    """The short name of `value` in `enum` (a generated EnumTypeWrapper); "unspecified" when unknown."""
    try:
        name = enum.Name(value)
    except ValueError:
        return "unspecified"
    return name.removeprefix(_prefix(enum.DESCRIPTOR.name)).lower()


def value_of(enum: Any, short: str) -> int:
    """The inverse of `label`: `value_of(common_pb2.Stage, "tts")` is STAGE_TTS."""
    return enum.Value(_prefix(enum.DESCRIPTOR.name) + short.upper())
