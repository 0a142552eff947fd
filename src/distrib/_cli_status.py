"""``distrib status``: the workers configured (or discovered, or lingering) and the workers
launched by Mains running here, with their load, the Mains they serve and whether they answer.
Only ``_cli`` imports this module."""

from __future__ import annotations

import sys
from typing import Any

import click

from distrib._errors import DistribError


@click.command()
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds to wait for each worker's answer.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(timeout: float, as_json: bool) -> None:
    """Show the configured (and discovered) workers: load, Mains served, reachability."""
    import json

    from rich.console import Console
    from rich.table import Table

    from distrib import _config
    from distrib._linger import lingering
    from distrib.launch import _records
    from distrib.main import _status

    try:
        settings = _config.load()
    except DistribError as exc:
        raise click.ClickException(str(exc)) from None
    targets = [(w.address, w.public_key, "configured") for w in settings.workers]
    targets += [(a, None, f"lingering local cluster, pid {p}") for a, p in lingering()]
    if settings.discovery.enabled:
        from distrib.wire._mdns import browse_once

        known = {a for a, _, _ in targets}
        for found in browse_once(settings.discovery.interfaces, timeout):
            if found.address not in known:
                targets.append((found.address, found.public_key, "discovered"))
    launched = _records.lines(settings.cache_dir)  # (workers launched by Mains running here)
    if not targets and not launched:
        raise click.ClickException(
            f"no workers configured ({settings.source}) nor a local cluster lingering: set "
            "DISTRIB_WORKERS, add [[workers]] to distrib.toml, or turn on [discovery]")
    answers = _status.query_all(targets, settings, timeout) if targets else []
    if as_json:
        click.echo(json.dumps([{"address": s.address, "source": s.source, "problem": s.problem,
                                **s.info} for s in answers] + [
            {"launched": x} for x in launched], indent=2))
        return
    table = Table(title="distrib workers")
    for column in ("name", "address", "platform", "Pythons", "busy/slots", "queued",
                   "re-runs", "environments", "Mains served", "state"):
        # Fold rather than cut: the state says why a worker is unreachable.
        table.add_column(column, overflow="fold", min_width=16 if column == "state" else None)
    for s in answers:
        i = s.info
        table.add_row(
            str(i.get("name", "?")), s.address, str(i.get("platform", "")),
            ", ".join(i.get("pythons") or ([i["python"]] if "python" in i else [])),
            f"{i['busy']}/{i['slots']}" if "slots" in i else "",
            str(i.get("queued", "")), str(i.get("reruns", "")),
            f"{i['envs_built']} built, {i['envs_reused']} reused, {i['envs_failed']} failed"
            + (f"; cached: {i['workspaces_cached']} workspaces "
               f"({i['workspaces_bytes'] / 1e6:,.1f} MB), {i['envs_cached']} environments "
               f"({i['envs_bytes'] / 1e6:,.1f} MB)" if "envs_cached" in i else "")
            if "envs_built" in i else "",
            "; ".join(_served(x) for x in i["served"]) if "served" in i
            else ", ".join(i.get("mains", [])),
            (f"reachable, {i.get('state', 'serving')}"
             + (f": {i['why']}" if i.get("why") else "") + f" ({s.source})" if s.reachable
             else f"unreachable: {s.problem}"))
    # Piped to a file, whole lines: the state column says why a worker is unreachable.
    console = Console(width=None if sys.stdout.isatty() else 240)
    if answers:
        console.print(table)
    if launched:
        console.print(_records.table(launched))
    if not all(s.reachable for s in answers):
        sys.exit(1)


def _served(main: dict[str, Any]) -> str:
    """One Main a worker serves, as its owner reads it (and which way its link goes)."""
    key = f" (key {main['key']}...)" if main.get("key") else ""
    quota = f", {main['quota']}" if main.get("quota") else ""
    way = f", dialled {main['link']}" if main.get("link", "in") != "in" else ""
    unsent = f", {main['unsent']} message(s) it does not take yet" if main.get("unsent") else ""
    return (f"{main['name']}{key}: {main['held']} slot(s), {main['queued']} waiting{quota}{way}"
            f"{unsent}")
