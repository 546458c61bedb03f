"""Speech to text: faster-whisper behind the SpeechToText gRPC service."""
