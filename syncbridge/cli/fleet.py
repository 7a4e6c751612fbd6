"""CLI: ``syncbridge fleet status``: the pods and leases seen in the bucket."""

from __future__ import annotations

import argparse
import json

import attrs

from .common import add_common
from ..fleet import describe_pods, fleet_status, lease_status, prune

RECENT_HOURS = 24.0


def register(sub: argparse._SubParsersAction) -> None:

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
    s = fsub.add_parser("prune", help="delete the heartbeats of pods gone for a while",
                        description="Delete the heartbeat objects of pods not heard from for --older-than hours "
                                    "(by the bucket's clock), so `fleet status` shows the pods that matter. "
                                    "Leases are never deleted.")
    s.add_argument("--older-than", type=float, default=RECENT_HOURS, metavar="HOURS",
                   help=f"age of the last heartbeat, in hours (default {RECENT_HOURS:g})")
    s.add_argument("-n", "--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    add_common(s)
    s.set_defaults(func=prune_command)


def add_status_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--all-leases", action="store_true", help="also list released and expired leases")
    p.add_argument("--all", action="store_true",
                   help=f"also list pods not heard from for more than {RECENT_HOURS:g} hours")


def status_command(args: argparse.Namespace, ctx) -> int:
    """Print the fleet: one row per pod, then the leases held."""
    config = ctx.config()
    pods = fleet_status(config)
    hidden = 0
    if not getattr(args, "all", False):
        recent = [p for p in pods if p.age_seconds <= RECENT_HOURS * 3600]
        hidden, pods = len(pods) - len(recent), recent
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
    if hidden:
        ctx.out(f"({hidden} pod{'s' if hidden != 1 else ''} not heard from for over {RECENT_HOURS:g} h hidden: "
                f"--all shows them, `syncbridge fleet prune` deletes them)")
    for s in leases:
        ctx.out(f"lease {s.kind} {s.verdict.subject or s.key}: {s.verdict.describe()}")
    return 0


def prune_command(args: argparse.Namespace, ctx) -> int:
    config = ctx.config()
    gone = prune(config, older_than=args.older_than * 3600, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for key in gone:
        ctx.out(f"{verb} {key}")
    ctx.out(f"{verb} {len(gone)} heartbeat{'s' if len(gone) != 1 else ''} older than {args.older_than:g} h")
    return 0
