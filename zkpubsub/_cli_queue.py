"""``zkpubsub queue``: put, reserve, list, stats, dead letters and replay of
work queues from the command line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from ._cli_common import (
    BadOption,
    CliContext,
    apart,
    failure,
    json_arguments,
    name_of,
    not_negative,
    parse_headers,
    pass_ctx,
    read_or_fail,
    table,
    whole,
    work_queue_table,
)
from .errors import ZkPubSubError


@click.group()
def queue() -> None:
    """Work queues: put, reserve, stats, dead letters, replay."""


def _payloads(messages: Sequence[str], fmt: str) -> list[Any]:
    return list(messages) if fmt == "text" else json_arguments(messages, "payload")


def _existing(ctx: CliContext, name: str) -> None:
    """Fail (exit code 1) unless queue ``name`` is there: a reserve or a
    replay would otherwise create a mistyped one, and its root."""
    with ctx.observer() as observer:
        read_or_fail(lambda: observer.queue_stats(name))


@queue.command("put")
@click.argument("name", callback=name_of("queue name"))
@click.argument("payloads", nargs=-1, required=True)
@click.option(
    "--priority",
    "-p",
    default=100,
    show_default=True,
    type=int,
    callback=whole("--priority", 0, 999),
    help="0-999, lower first.",
)
@click.option("--header", "-H", multiple=True, help="KEY=VALUE, repeatable.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--wait-result",
    type=float,
    default=None,
    metavar="SECONDS",
    callback=not_negative("--wait-result"),
    help="Put one item wanting a result and wait for it.",
)
@pass_ctx
@apart
def queue_put(
    ctx: CliContext,
    name: str,
    payloads: Sequence[str],
    priority: int,
    header: Sequence[str],
    fmt: str,
    wait_result: float | None,
) -> None:
    """Put PAYLOADS into queue NAME, one item each."""
    items = _payloads(payloads, fmt)
    headers = parse_headers(header)
    if wait_result is not None and len(items) != 1:
        raise click.BadParameter("--wait-result takes exactly one payload")
    with ctx.client(serializer="json" if fmt == "json" else None, cleaner=False) as client:
        try:
            q = client.queue(name)
            if wait_result is not None:
                ticket = q.put(items[0], priority=priority, headers=headers, want_result=True)
                click.echo(ticket.id, err=True)
                click.echo(json.dumps(ticket.wait(timeout=wait_result), default=repr))
                return
            for item_id in q.put_many(items, priority=priority, headers=headers):
                click.echo(item_id)
        except (ZkPubSubError, ValueError, TypeError) as exc:
            for item_id in getattr(exc, "put_ids", ()):  # the items put before it
                click.echo(item_id)
            raise failure(exc) from exc


@queue.command("reserve")
@click.argument("name", callback=name_of("queue name"))
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, callback=not_negative("--timeout")
)
@click.option("--release", is_flag=True, help="Give the item back instead of acking it.")
@pass_ctx
@apart
def queue_reserve(ctx: CliContext, name: str, timeout: float, release: bool) -> None:
    """Take one item from queue NAME, print it, and ack it (or release it)."""
    _existing(ctx, name)
    with ctx.client(cleaner=False) as client:
        try:
            item = client.queue(name).reserve(timeout=timeout)
            if item is None:
                raise click.ClickException(f"no item in {name!r} within {timeout:g}s")
            record = {
                "id": item.id,
                "payload": item.payload,
                "priority": item.priority,
                "attempts": item.attempts,
                "headers": item.headers,
            }
            click.echo(json.dumps(record, default=repr))
            if release:
                item.release()
            else:
                item.ack()
        except ZkPubSubError as exc:
            raise failure(exc) from exc
        except ValueError as exc:
            raise BadOption(str(exc)) from exc


@queue.command("list")
@pass_ctx
@apart
def queue_list(ctx: CliContext) -> None:
    """The work queues, with their counts (reads only)."""
    with ctx.observer() as observer:
        queues = read_or_fail(lambda: [observer.queue_stats(n) for n in observer.queues()])
    if not queues:
        click.echo(f"no work queues under {ctx.root}")
        return
    click.echo(work_queue_table(queues))


@queue.command("stats")
@click.argument("name", callback=name_of("queue name"))
@pass_ctx
@apart
def queue_stats(ctx: CliContext, name: str) -> None:
    """Ready, reserved and dead items of queue NAME, and its workers (reads only)."""
    with ctx.observer() as observer:
        s = read_or_fail(lambda: observer.queue_stats(name))
    click.echo(work_queue_table([s]))


@queue.command("dead")
@click.argument("name", callback=name_of("queue name"))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
@apart
def queue_dead(ctx: CliContext, name: str, as_json: bool) -> None:
    """List the dead letters of queue NAME (reads only)."""
    with ctx.observer() as observer:
        dead = read_or_fail(lambda: observer.dead(name))
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": d.id,
                        "payload": d.payload,
                        "priority": d.priority,
                        "attempts": d.attempts,
                        "reason": d.reason,
                        "died_at": d.died_at,
                    }
                    for d in dead
                ],
                default=repr,
                indent=2,
            )
        )
        return
    if not dead:
        click.echo(f"no dead letters in {name!r}")
        return
    rows = [
        (d.id, d.attempts, json.dumps(d.payload, default=repr)[:40], d.reason[:60]) for d in dead
    ]
    click.echo(table(["ID", "ATTEMPTS", "PAYLOAD", "REASON"], rows))


@queue.command("replay")
@click.argument("name", callback=name_of("queue name"))
@click.option("--id", "ids", multiple=True, help="Only these items (repeatable).")
@pass_ctx
@apart
def queue_replay(ctx: CliContext, name: str, ids: Sequence[str]) -> None:
    """Put dead letters of queue NAME back as new items."""
    _existing(ctx, name)
    with ctx.client(cleaner=False) as client:
        count = read_or_fail(lambda: client.queue(name).replay(list(ids) or None))
    click.echo(f"replayed {count} item(s)")
    missing = len(set(ids)) - count
    if ids and missing > 0:
        raise click.ClickException(
            f"{missing} of the {len(set(ids))} ids given are not dead letters of {name!r}"
        )
