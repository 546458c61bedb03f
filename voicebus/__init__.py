"""Voicebus shared plumbing: settings, logging, telemetry, auth, gRPC and NATS helpers,
audio decoding and packaged models. Every service imports from here; nothing here
knows about a particular engine."""

__version__ = "0.1.0"
