"""The Assistant gRPC service: conversations in SQLite, the streaming turn pipeline, NATS events."""
