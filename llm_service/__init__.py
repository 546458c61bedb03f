"""Streamed answers behind the LanguageModel gRPC service: Groq, or a local GGUF model."""
