"""HTTP + WebSocket gateway for browsers, and the page itself (FastAPI under uvicorn)."""
