"""Generated protobuf and gRPC stubs for voicebus.v1 (scripts/gen_protos.sh)."""
