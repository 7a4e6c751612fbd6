"""CLI: ``syncbridge models pull | list | cache push``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .common import add_common
from ..fmt import human_bytes as _human
from ..models import PullReport, list_models, pull_models, push_cache
from .progress import ModelsProgress
from ..system import free_bytes

def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser("models", help="pull models (cache first, then Hugging Face, CivitAI, URL); add them from "
                                      "links, workflows or this pod; tidy the cache",
                       description="Model warm-start from manifests (TOML). Every manifest key, source and "
                                   "setting is in docs/models.md.")
    add_common(p)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True

    q = msub.add_parser("pull", help="put every enabled model in place, verified",
                        description="For each enabled model: skip it when present and verified; else copy it "
                                    "from the R2 cache (<cache_prefix>/<path>), else Hugging Face, CivitAI, URL. "
                                    "Downloads are verified (size, sha256) and renamed into place only when "
                                    "complete. Exit 1 when a required model fails; optional ones only warn.")
    q.add_argument("manifests", nargs="*", metavar="MANIFEST",
                   help="manifest files (default: SYNCBRIDGE_MODELS, several separated by ':')")
    q.add_argument("-n", "--dry-run", action="store_true",
                   help="print the plan (which source each model would come from); download nothing")
    q.add_argument("--parallel", type=int, metavar="N", help="models fetched at once (default: the manifest's, "
                                                             "else 3)")
    add_common(q)
    q.set_defaults(func=_pull)

    q = msub.add_parser("list", help="show each model's local state (no network)",
                        description="Show each model's state without any network request: present (verified), "
                                    "planned (missing or not verifying) or skipped (enabled_by / min_tier).")
    q.add_argument("manifests", nargs="*", metavar="MANIFEST")
    add_common(q)
    q.set_defaults(func=_list)

    q = msub.add_parser("add", help="add a model to a manifest from a link (Hugging Face, CivitAI, a URL)",
                        description="Append a [[model]] entry to a manifest from SOURCE: hf:REPO/PATH[@REV], a "
                                    "Hugging Face resolve/blob URL, a CivitAI model page (?modelVersionId=V) or "
                                    "download URL, or any http(s) URL. The name, size and sha256 come from the "
                                    "source's metadata; a plain URL is downloaded into the models folder and "
                                    "hashed. The manifest keeps its comments and layout; a second entry for the "
                                    "same path or name is refused. See docs/models.md.")
    q.add_argument("source", metavar="SOURCE")
    q.add_argument("--manifest", metavar="FILE", help="the manifest (default: the first of SYNCBRIDGE_MODELS; "
                                                      "created when missing)")
    q.add_argument("--dir", metavar="FOLDER", help="the ComfyUI folder: checkpoints, loras, vae, ... (default: "
                                                   "CivitAI's model type)")
    q.add_argument("--name", help="the entry's name (default: the file name)")
    q.add_argument("--no-download", action="store_true", help="a plain URL: enter it without a sha256 "
                                                              "instead of downloading it to hash it")
    q.add_argument("--pull", action="store_true", help="pull the model now")
    add_common(q)
    q.set_defaults(func=_add)

    q = msub.add_parser("capture", help="put the models on this pod that nothing names in the cache and the profile",
                        description="Every complete model file in the models folder that no manifest and not the "
                                    "profile names (not a partial download, not open for writing, unchanged for "
                                    "SYNCBRIDGE_WATCH_QUIET_SECONDS) is hashed, put in the cache and recorded in the "
                                    "profile (SYNCBRIDGE_MODELS_PROFILE), which `start` pulls with "
                                    "SYNCBRIDGE_MODELS_CAPTURE=true. See docs/models.md.")
    q.add_argument("-n", "--dry-run", action="store_true", help="only list what would be captured")
    add_common(q)
    q.set_defaults(func=_capture)
    q = msub.add_parser("forget", help="take a model out of the profile",
                        description="Remove PATH (relative to the models folder) from the profile, so pods of the "
                                    "profile no longer pull it. Its cache entry stays (`models cache prune` removes "
                                    "what nothing names).")
    q.add_argument("path", metavar="PATH")
    add_common(q)
    q.set_defaults(func=_forget)

    q = msub.add_parser("from-workflow", help="the models ComfyUI workflows need, and where each comes from",
                        description="Read ComfyUI workflows (UI or API format; a folder: its *.json) and list "
                                    "every model they need, with the nodes that want it: present in the models "
                                    "folder, in the bucket cache, from the workflow's URL (a Hugging Face or "
                                    "CivitAI URL goes through that source, so HF_TOKEN and CIVITAI_API_KEY "
                                    "apply), or unresolved. Exit 1 when a model is unresolved. See "
                                    "docs/models.md.")
    q.add_argument("workflows", nargs="+", metavar="WORKFLOW", help="workflow files or folders of them")
    q.add_argument("--models-dir", metavar="DIR", help="the models folder (default: SYNCBRIDGE_MODELS_DIR, else "
                                                       "/workspace/ComfyUI/models)")
    q.add_argument("--cache-prefix", metavar="PREFIX", default="models", help="the cache's key prefix (default "
                                                                               "models)")
    q.add_argument("--write", metavar="MANIFEST", help="write a manifest of the models (refuses an existing file)")
    q.add_argument("--pull", action="store_true", help="pull the models now, as `models pull` would")
    q.add_argument("--json", action="store_true", help="one JSON object per model")
    add_common(q)
    q.set_defaults(func=_from_workflow)

    q = msub.add_parser("cache", help="the bucket's model cache: push, ls, prune, verify",
                        description="Manage the models cache in the bucket.")
    add_common(q)
    csub = q.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True
    _cache_action(csub, "push", _cache_push, "push every present, verified model to <cache_prefix>/<path>",
                  "Push every enabled model that is present and verified locally to the cache (<cache_prefix>/<path>, "
                  "sha256 in metadata) with conditional puts (If-None-Match: *): an object already there is "
                  "verified, never overwritten.")
    r = _cache_action(csub, "ls", _cache_ls, "the cache's entries, sizes, monthly cost and which manifest uses each",
                      "List every object under the cache prefix with its size, its sha256 and the manifest entries "
                      "(and SYNCBRIDGE_WORKFLOWS models) that name it; the total and its monthly storage cost.")
    r.add_argument("--price", type=float, default=0.015, metavar="USD",
                   help="storage price per GB-month (default 0.015, R2's published price)")
    r.add_argument("--json", action="store_true", help="one JSON object per entry")
    r = _cache_action(csub, "prune", _cache_prune, "remove the cache entries no manifest names (a dry run unless "
                                                   "--apply)",
                      "Remove the objects under the cache prefix that no manifest entry (nor SYNCBRIDGE_WORKFLOWS) "
                      "names. A dry run unless --apply; an entry another pod is filling (it holds the fill lease) is "
                      "always kept. With no manifest at all, nothing is removed.")
    r.add_argument("--apply", action="store_true", help="delete (default: only say what would go)")
    r = _cache_action(csub, "verify", _cache_verify, "check the cache's objects against the manifests' sizes and "
                                                     "sha256",
                      "For each manifest entry, check its cache object: present, the size and the sha256 (its "
                      "metadata; --deep reads and hashes the object). Exit 1 on any mismatch or missing object.")
    r.add_argument("--deep", action="store_true", help="read every object and hash it")


def _cache_action(csub: argparse._SubParsersAction, name: str, func, help: str, description: str
                  ) -> argparse.ArgumentParser:
    """A ``models cache`` action: its MANIFEST arguments and the common options."""
    r = csub.add_parser(name, help=help, description=description)
    r.add_argument("manifests", nargs="*", metavar="MANIFEST")
    add_common(r)
    r.set_defaults(func=func)
    return r


def _finish(ctx, report: PullReport) -> int:
    ctx.out(report.table())
    for result in report.results:
        if result.status == "optional_failed":
            print(f"[syncbridge] warning: optional model {result.name} is missing", file=sys.stderr, flush=True)
    if not report.ok:
        failed = [r.name for r in report.results if r.status == "failed"]
        print(f"[syncbridge] error: {len(failed)} required model(s) failed: {', '.join(failed)}", file=sys.stderr,
              flush=True)
        return 1
    if report.cache_error:
        # The models are in place (from upstream), but the cache never fills and the next pod pays again.
        stop = ctx.config().start.on_bucket_failure == "stop"
        what = ("the bucket cache refused writes (a read-only token?), so nothing was written back" if
                report.cache_write_only else "the bucket cache refused access, so nothing came from it and nothing "
                                             "was written back")
        print(f"[syncbridge] {'error' if stop else 'warning'}: {what}: {report.cache_error}"
              + ("" if not stop else " (SYNCBRIDGE_ON_BUCKET_FAILURE=warn lets this pass with exit 0)"),
              file=sys.stderr, flush=True)
        return 1 if stop else 0
    return 0


def _no_attempt_records(record: logging.LogRecord) -> bool:
    return getattr(record, "event", None) != "models.attempt_failed"


def _pull(args, ctx) -> int:
    overrides = {"models.parallel": args.parallel} if args.parallel else None
    config = ctx.config(overrides)
    ctx.say(f"models: cache in {config.remote.describe()}")
    progress = None if (args.quiet or args.dry_run) else ModelsProgress()
    # The progress display prints each failed attempt itself: its log record would say it twice.
    logger = logging.getLogger("syncbridge.models.puller")  # where the attempt records are logged
    if progress is not None:
        logger.addFilter(_no_attempt_records)
    try:
        report = pull_models(config, args.manifests or None, dry_run=args.dry_run, on_event=progress,
                             environ=ctx.environ)
    finally:
        logger.removeFilter(_no_attempt_records)
        if progress is not None:
            progress.close()
    if args.dry_run:
        ctx.out("plan (nothing downloaded):")
        code = _finish(ctx, report)
        planned = sum(r.size for r in report.results if r.status == "planned")
        if report.models_dir is not None:
            ctx.out(f"would download {_human(planned)}; {_human(free_bytes(report.models_dir))} free in "
                    f"{report.models_dir}")
        return code
    return _finish(ctx, report)


def _list(args, ctx) -> int:
    report = list_models(ctx.config(), args.manifests or None, environ=ctx.environ)
    for r in report.results:
        ctx.out(f"{r.status:<8} {r.name}  {r.path}" + (f"  ({r.message})" if r.message else ""))
    return 0


def _cache_push(args, ctx) -> int:
    config = ctx.config()
    ctx.say(f"models cache: {config.remote.describe()}")
    report = push_cache(config, args.manifests or None, environ=ctx.environ)
    rows = [("model", "outcome", "size")]
    for r in report.results:
        rows.append((r.name, r.write_back or f"{r.status}: {r.message}", _human(r.size) if r.size else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        ctx.out("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0 if report.ok else 1


def _from_workflow(args, ctx) -> int:
    import json

    from ..errors import ConfigError, Problem
    from ..fsutil import atomic_write_bytes, private_state_dir
    from ..models.fromworkflow import workflow_models

    config = ctx.config()
    found = workflow_models(config, args.workflows, models_dir=Path(args.models_dir) if args.models_dir else None,
                            cache_prefix=args.cache_prefix)
    if found.cache_error:
        ctx.say(f"warning: the bucket cache could not be listed, so it is left out: {found.cache_error}")
    for r in found.resolved:
        if args.json:
            ctx.out(json.dumps(r.as_dict()))
        else:
            more = f" (+{len(r.model.wanted_by) - 1} more)" if len(r.model.wanted_by) > 1 else ""
            ctx.out(f"{r.status:<10} {r.model.path}  wanted by {r.model.wanted_by[0]}{more}")
    ctx.say(found.summary())
    if args.write:
        target = Path(args.write)
        if target.exists():
            raise ConfigError([Problem(f"--write {target}", "exists already; name a new file (a manifest "
                                                             "written by hand is never overwritten)")])
        atomic_write_bytes(target, found.manifest.encode("utf-8"), mode=0o644)
        ctx.say(f"wrote {target}: pull it with `syncbridge models pull {target}` or add it to SYNCBRIDGE_MODELS")
    code = 0
    if args.pull and len(found.unresolved) < len(found.resolved):
        manifest = private_state_dir(config.state_dir) / "workflow-models.toml"
        atomic_write_bytes(manifest, found.manifest.encode("utf-8"))
        code = _finish(ctx, pull_models(config, [manifest], environ=ctx.environ))
    for r in found.unresolved:
        print(f"[syncbridge] error: no source for {r.model.path}, wanted by {', '.join(r.model.wanted_by)}: "
              f"not in the models folder, not in the cache, and the workflow gives no URL", file=sys.stderr,
              flush=True)
    return 1 if found.unresolved else code


def _add(args, ctx) -> int:
    from ..errors import ConfigError, Problem
    from ..models.add import append_entry, describe, parse_source
    from ..models.sources import default_sources
    from ..models.spec import DEFAULT_MODELS_DIR

    config = ctx.config()
    if args.manifest:
        manifest = Path(args.manifest)
    elif config.models.manifests:
        manifest = Path(config.models.manifests[0])
    else:
        raise ConfigError([Problem("--manifest", "is needed: SYNCBRIDGE_MODELS names no manifest to add to")])
    source = parse_source(args.source, hf_endpoint=config.models.hf_endpoint,
                          civitai_endpoint=config.models.civitai_endpoint)
    ladder = default_sources(store=None, cache_prefix="models", hf_endpoint=config.models.hf_endpoint,
                             hf_token=config.models.hf_token, civitai_endpoint=config.models.civitai_endpoint,
                             civitai_api_key=config.models.civitai_api_key)
    models_dir = Path(config.models.dir or _settings_of(manifest).get("models_dir") or DEFAULT_MODELS_DIR)
    added = describe(source, sources={s.name: s for s in ladder}, folder=args.dir, name=args.name,
                     download_to=None if args.no_download else (lambda path: models_dir / path))
    append_entry(manifest, added, models_dir=str(config.models.dir) if config.models.dir else None)
    what = ", ".join(x for x in (f"{added.size} bytes" if added.size is not None else "",
                                 f"sha256 {added.sha256[:12]}..." if added.sha256 else "no sha256") if x)
    ctx.out(f"added {added.name}: {added.path} ({what}) to {manifest}")
    if args.pull:  # this model only, with the manifest's settings
        import tomlkit

        from ..fsutil import atomic_write_bytes, private_state_dir

        settings = {k: v for k, v in _settings_of(manifest).items() if k in ("models_dir", "cache_prefix")}
        settings.setdefault("models_dir", str(models_dir))
        one = private_state_dir(config.state_dir) / "added-model.toml"
        atomic_write_bytes(one, tomlkit.dumps({"settings": settings, "model": [added.entry()]}).encode("utf-8"))
        return _finish(ctx, pull_models(config, [one], environ=ctx.environ))
    return 0


def _settings_of(manifest: Path) -> dict:
    """A manifest's [settings] (empty when it does not exist yet; a broken one is reported on append)."""
    from ..tomlsrc import TOMLDecodeError, loads

    try:
        settings = loads(manifest.read_text(encoding="utf-8")).get("settings")
    except (OSError, UnicodeDecodeError, TOMLDecodeError):
        return {}
    return settings if isinstance(settings, dict) else {}


def _cache_manifests(ctx, names) -> tuple[list, str]:
    """[(label, Manifest)] of the manifests named (default SYNCBRIDGE_MODELS, plus SYNCBRIDGE_WORKFLOWS'
    models), and the cache prefix they share (the first's)."""
    from ..errors import ConfigError, Problem
    from ..models.fromworkflow import write_workflow_manifest
    from ..models.manifest import load_manifests

    config = ctx.config()
    paths = [Path(p) for p in (names or config.models.manifests)]
    if not names and config.models.workflows:
        paths.append(write_workflow_manifest(config))
    loaded = [(p.name, load_manifests([p], models_dir=config.models.dir)) for p in paths]
    prefixes = {m.cache_prefix.strip("/") for _, m in loaded}
    if len(prefixes) > 1:
        raise ConfigError([Problem("manifests", f"use different cache prefixes ({', '.join(sorted(prefixes))}): "
                                                f"name the manifests of one cache")])
    return loaded, (prefixes.pop() if prefixes else "models")


def _cache_ls(args, ctx) -> int:
    import json

    from ..models.cachetidy import inventory, monthly_cost
    from ..store import open_store

    config = ctx.config()
    manifests, prefix = _cache_manifests(ctx, args.manifests)
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        entries = inventory(store, manifests, prefix)
    finally:
        store.close()
    for e in entries:
        if args.json:
            ctx.out(json.dumps({"key": e.key, "size": e.size, "sha256": e.sha256, "used_by": list(e.used_by)}))
        else:
            ctx.out(f"{_human(e.size):>9}  {e.key}  " + (", ".join(e.used_by) if e.used_by else "(unused)"))
    total = sum(e.size for e in entries)
    unused = sum(e.size for e in entries if not e.used_by)
    ctx.say(f"{len(entries)} entries, {_human(total)} (${monthly_cost(total, args.price):.2f}/month at "
            f"${args.price:g}/GB-month); unused: {_human(unused)} (${monthly_cost(unused, args.price):.2f}/month)")
    return 0


def _cache_prune(args, ctx) -> int:
    from ..errors import ConfigError, Problem
    from ..fleet.lease import Leases
    from ..fleet.rules import lease_key
    from ..models.cachetidy import inventory, prune
    from ..store import open_store

    config = ctx.config()
    manifests, prefix = _cache_manifests(ctx, args.manifests)
    if not manifests:
        raise ConfigError([Problem("SYNCBRIDGE_MODELS", "names no manifest: every cache entry would look unused, "
                                                         "so nothing is pruned (name the manifests)")])
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        leases = Leases(store, owner=config.pod_id, prefix=config.fleet.prefix)

        def being_filled(key: str) -> str | None:
            _view, verdict = leases.inspect(lease_key(config.fleet.prefix, "models", key),
                                            default_ttl=config.fleet.lease_seconds)
            return (verdict.holder or "?") if verdict.state == "held" else None

        findings = prune(store, inventory(store, manifests, prefix), being_filled=being_filled, apply=args.apply)
    finally:
        store.close()
    for f in findings:
        ctx.out(f"{f.what:<12} {f.key}  ({f.detail})")
    gone = [f for f in findings if f.what in ("deleted", "would delete")]
    ctx.say(f"{len(gone)} unused entr{'y' if len(gone) == 1 else 'ies'} "
            + ("deleted" if args.apply else "would be deleted (a dry run: --apply deletes)"))
    return 0


def _cache_verify(args, ctx) -> int:
    from ..models.cachetidy import verify
    from ..store import open_store

    config = ctx.config()
    manifests, _prefix = _cache_manifests(ctx, args.manifests)
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        findings = verify(store, manifests, deep=args.deep)
    finally:
        store.close()
    for f in findings:
        ctx.out(f"{f.what:<10} {f.key}  ({f.detail})")
    bad = [f for f in findings if f.what not in ("ok",)]
    ctx.say(f"{len(findings)} checked, {len(bad)} not ok")
    return 1 if any(f.what in ("missing", "size", "sha256") for f in bad) else 0


def _capture(args, ctx) -> int:
    from ..models.capture import Capturer, finished_models, profile_for
    from ..models.localstate import HashCache
    from ..models.manifest import load_manifests
    from ..store import open_store

    config = ctx.config()
    named = set()
    if config.models.manifests:
        named = {m.path for m in load_manifests(list(config.models.manifests), models_dir=config.models.dir).models}
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        profile = profile_for(config, store)
        named |= set(profile.read()[0])
        if args.dry_run:
            for rel, st in finished_models(profile.models_dir, skip=lambda rel, _st: rel in named,
                                           quiet=config.watch.quiet_seconds):
                ctx.out(f"would capture {rel} ({_human(st.st_size)})")
            return 0
        capturer = Capturer(store, profile, models_dir=profile.models_dir, cache_prefix=profile.cache_prefix,
                            quiet=config.watch.quiet_seconds, baseline=named, hashes=HashCache.of(config.state_dir))
        for c in capturer.scan():
            ctx.out(f"captured {c.path} ({_human(c.size)}, sha256 {c.sha256[:12]}...): cache {c.cache}")
        ctx.say(f"{len(capturer.captured)} model(s) captured into {profile.key}")
    finally:
        store.close()
    return 0


def _forget(args, ctx) -> int:
    from ..errors import ConfigError, Problem
    from ..models.capture import profile_for
    from ..store import open_store

    config = ctx.config()
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        profile = profile_for(config, store)
        if not profile.forget(args.path.strip("/")):
            raise ConfigError([Problem(f"PATH {args.path}", f"is not in the profile {profile.key}")])
    finally:
        store.close()
    ctx.out(f"forgot {args.path}: pods of the profile no longer pull it")
    return 0
