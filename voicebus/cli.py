"""The `voicebus` command: `up`, `status`, `doctor`, `config`, `rpc`, `talk`, `trace`, `migrate`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from voicebus import rpc_cli, talk, trace_cli
from voicebus.config import CommonSettings, settings_table


def print_config() -> None:
    print("| Variable | Default | Meaning |")
    print("| --- | --- | --- |")
    for env, default, description in settings_table():
        print(f"| `{env}` | `{default}` | {description} |" if default else f"| `{env}` | | {description} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="voicebus", description="Voicebus voice assistant backend.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start NATS, the four gRPC services and the web gateway")
    sub.add_parser("status", help="health of a running stack")
    sub.add_parser("doctor", help="what is installed, which models are in use, which ports answer, whether auth "
                                  "is on, and what is wrong")
    sub.add_parser("config", help="every VOICEBUS_* setting with its default (Markdown table)")
    rpc_cli.add_arguments(sub.add_parser("rpc", help="list, describe or call a service's gRPC methods "
                                                     "(what grpcurl does, from server reflection)"))
    talk.add_arguments(sub.add_parser("talk", help="one turn with the Assistant: a recording or typed text"))
    trace_cli.add_arguments(sub.add_parser("trace", help="recent traces, or one trace as a tree (from the gateway's "
                                                         "/debug/traces)"))
    sub.add_parser("migrate", help="bring the conversation store's schema (VOICEBUS_DATABASE_URL) up to date")
    args = parser.parse_args(argv)

    if args.command == "config":
        print_config()
        return
    if args.command == "doctor":
        from voicebus import doctor

        sys.exit(doctor.run())
    if args.command == "rpc":
        sys.exit(rpc_cli.run(args))
    if args.command == "talk":
        sys.exit(talk.run(args))
    if args.command == "trace":
        sys.exit(trace_cli.run(args))
    if args.command == "migrate":
        from orchestrator import migrate

        sys.exit(migrate.main())
    settings = CommonSettings()
    from voicebus.stack import run_stack, stack_status

    if args.command == "up":
        sys.exit(asyncio.run(run_stack(settings)))
    sys.exit(asyncio.run(stack_status(settings)))


if __name__ == "__main__":
    main()
