"""Speech from text behind the TextToSpeech gRPC service: Piper and pyttsx3/espeak-ng."""
