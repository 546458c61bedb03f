"""`python -m orchestrator.migrate` (also `voicebus migrate`): bring the conversation store's schema
up to date and exit, e.g. as a deployment step before new orchestrators start. The orchestrator
runs the same migrations at start, so this is never required; running it twice changes nothing."""

from __future__ import annotations

import asyncio
import sys

from orchestrator.settings import OrchestratorSettings
from orchestrator.store import StoreError, open_store


async def migrate(settings: OrchestratorSettings) -> str:
    store = await open_store(settings.store_url(), pool_size=1, timeout=settings.database_timeout_seconds)
    try:
        (before, after), where = store.schema, store.where()
    finally:
        await store.close()
    if before == after:
        return f"{where}: schema at version {after}, nothing to do"
    return f"{where}: schema migrated from version {before} to {after}"


def main() -> int:
    try:
        print(asyncio.run(migrate(OrchestratorSettings())))
    except StoreError as exc:
        print(f"migrate: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
