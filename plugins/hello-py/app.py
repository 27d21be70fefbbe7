"""Example Ferry plugin in Python, built with componentize-py against the
`service-with-events` world in the repository's `wit/` folder.

Actions: `echo` answers its params and the context it saw (the same shape as
the Rust `echo`), `whoami` the caller's subject and tenant, `visit` counts
the tenant's visits in the application's database (the manifest grants it),
`boom` raises, to show that an exception becomes `plugin_trap`, and
`publish` publishes `{topic, payload}` on the application's bus, and
`call` calls `{service, action, params}` and answers `{answer}`.

Events it is subscribed to (`permissions.events.subscribe` in its manifest)
are published again on `seen.hello-py` with what the delivery said; a
payload with `retry_until: N` is answered `retry` until attempt N, and
`reject: true` is rejected.

Build: `make plugins` at the repository root, or `../../sdk/python/build.sh .`
"""

import json
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import event_handler
from wit_world.imports import events, log, services, sql
from wit_world.imports.types import Context, Error


def echo(ctx: Context, params):
    return {
        "params": params,
        "ctx": {
            "request_id": ctx.request_id,
            "app": ctx.app,
            "service": ctx.service,
            "tenant": ctx.tenant,
            "subject": ctx.subject,
            "claims": json.loads(ctx.claims),
            "time_left_ms": ctx.time_left_ms,
        },
    }


def whoami(ctx: Context, params):
    return {"subject": ctx.subject, "tenant": ctx.tenant}


def visit(ctx: Context, params):
    if ctx.tenant is None:
        raise Err(Error("forbidden", "visits are counted per tenant; the request has none"))
    # Portable SQL with `?` placeholders: the same on SQLite, MariaDB and
    # PostgreSQL. Values are always bound, never spliced into the text.
    sql.execute(
        "CREATE TABLE IF NOT EXISTS hello_visits (tenant VARCHAR(128) NOT NULL, at BIGINT NOT NULL)",
        [],
    )
    sql.execute(
        "INSERT INTO hello_visits (tenant, at) VALUES (?, ?)",
        [sql.Value_Text(ctx.tenant), sql.Value_Int(ctx.time_left_ms)],
    )
    rows = sql.query(
        "SELECT COUNT(*) AS n FROM hello_visits WHERE tenant = ?",
        [sql.Value_Text(ctx.tenant)],
    )
    return {"tenant": ctx.tenant, "visits": rows.rows[0][0].value}


def boom(ctx: Context, params):
    raise RuntimeError("boom requested")


def publish(ctx: Context, params):
    event_id = events.publish(params["topic"], json.dumps(params["payload"]))
    return {"event_id": event_id}


def call(ctx: Context, params):
    """Calls another service (the manifest must list it under
    `permissions.calls`) and answers what it answered."""
    request = services.Request(params["service"], params["action"], json.dumps(params.get("params", {})), None)
    return {"answer": json.loads(services.call(request))}


ACTIONS = {"echo": echo, "whoami": whoami, "visit": visit, "boom": boom, "publish": publish, "call": call}


class Handler(exports.Handler):
    def handle(self, ctx: Context, action: str, params: str) -> str:
        run = ACTIONS.get(action)
        if run is None:
            names = ", ".join(ACTIONS)
            raise Err(Error("not_found", f"service `{ctx.service}` has no action `{action}` (it has: {names})"))
        try:
            args = json.loads(params)
        except ValueError as e:
            raise Err(Error("bad_request", f"invalid params: {e}"))
        try:
            return json.dumps(run(ctx, args))
        except Err:
            # An error for the caller, ours or one the host answered (`sql`).
            raise
        except Exception:
            # Anything else is a bug: log it, so the host quotes it in the
            # `plugin_trap` it answers, and let it trap.
            log.log(log.Level.ERROR, traceback.format_exc(limit=5))
            raise


class EventHandler(exports.EventHandler):
    def handle_event(self, event: event_handler.Event) -> None:
        try:
            payload = json.loads(event.payload)
        except ValueError as e:
            raise Err(event_handler.Failure_Reject(f"the payload is not JSON: {e}"))
        if isinstance(payload, dict):
            if payload.get("reject") is True:
                raise Err(event_handler.Failure_Reject("asked to reject"))
            until = payload.get("retry_until")
            if isinstance(until, int) and event.attempt < until:
                raise Err(event_handler.Failure_Retry(f"attempt {event.attempt} of {until}"))
        seen = {
            "app": event.app,
            "topic": event.topic,
            "subscription": event.subscription,
            "id": event.id,
            "seq": event.seq,
            "attempt": event.attempt,
            "source_time_ms": event.source_time_ms,
            "payload": payload,
        }
        try:
            events.publish("seen.hello-py", json.dumps(seen))
        except Err as e:
            raise Err(event_handler.Failure_Retry(f"{e.value.code}: {e.value.message}"))
