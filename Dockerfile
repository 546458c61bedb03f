# One image for every Voicebus service; docker-compose.yml picks the service with
# `command: ["python", "-m", "<service>"]`. Models come inside PyPI packages, so the
# image needs no download at run time.
FROM python:3.11-slim

# espeak-ng: the pyttsx3 TTS engine speaks through it; libgomp1: llama.cpp's OpenMP threads.
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng libgomp1 libstdc++6 \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    VOICEBUS_DATA_DIR=/data \
    VOICEBUS_LOG_FORMAT=json

WORKDIR /app

# Dependencies (and the packaged models, about 1 GB) first, in their own layer: it is
# rebuilt only when pyproject.toml changes. EXTRAS: e.g. "multilingual" (Whisper base).
ARG EXTRAS=""
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in os.environ.get('EXTRAS', '').split(',') if e.strip()]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e.strip()]]))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself.
COPY README.md ./
COPY proto ./proto
COPY voicebus ./voicebus
COPY stt_service ./stt_service
COPY llm_service ./llm_service
COPY tts_service ./tts_service
COPY orchestrator ./orchestrator
COPY web_gateway ./web_gateway
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin voicebus \
    && mkdir -p /data && chown voicebus /data

# Named volumes mounted on /data start with this folder's owner, so the service can write.
USER voicebus
VOLUME ["/data"]
EXPOSE 8000 50050 50051 50052 50053
CMD ["python", "-m", "orchestrator"]
