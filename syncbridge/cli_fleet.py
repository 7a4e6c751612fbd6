"""CLI: ``syncbridge fleet status``: the pods and leases seen in the bucket."""

from __future__ import annotations

import argparse
import json

import attrs

from .fleet import describe_pods, fleet_status, lease_status


def register(sub: argparse._SubParsersAction) -> None:
    from .cli import add_common

    p = sub.add_parser("fleet", help="pods and leases seen in the bucket (fleet status)",
                       description="Many pods, one bucket: show every pod's last heartbeat (pending, uploaded, "
                                   "failed, push latency) and who holds which lease.")
    fsub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    fsub.required = True
    s = fsub.add_parser("status", help="pods with their last heartbeat, and the leases held",
                        description="List the pods that wrote a heartbeat to <fleet.prefix>/pods/ (live: a beat "
                                    "within three intervals, by the bucket's clock), then the leases currently "
                                    "held (bisync prefixes, model fills) and by which pod.")
    add_status_options(s)
    add_common(s)
    s.set_defaults(func=status_command)


def add_status_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--all-leases", action="store_true", help="also list released and expired leases")


def status_command(args: argparse.Namespace, ctx) -> int:
    """Print the fleet: one row per pod, then the leases held."""
    config = ctx.config()
    pods = fleet_status(config)
    leases = lease_status(config, include_free=getattr(args, "all_leases", False))
    if getattr(args, "json", False):
        doc = {"pods": [attrs.asdict(p) | {"status": p.status} for p in pods],
               "leases": [{"key": s.key, "kind": s.kind, **attrs.asdict(s.verdict)} for s in leases]}
        ctx.out(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    if not pods:
        ctx.out(f"no pod heartbeats under {config.fleet.prefix}/pods/ in {config.remote.describe()} "
                f"(watchers write one every fleet.heartbeat_seconds)")
    else:
        live = sum(p.live for p in pods)
        ctx.out(f"{len(pods)} pod{'s' if len(pods) != 1 else ''} ({live} live) in {config.remote.describe()}")
        for line in describe_pods(pods):
            ctx.out(line)
    for s in leases:
        ctx.out(f"lease {s.kind} {s.verdict.subject or s.key}: {s.verdict.describe()}")
    return 0
