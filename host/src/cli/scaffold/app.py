"""{{name}}: a Ferry plugin in Python. `./build.sh` builds {{name}}.wasm
with componentize-py; see README.md for the smoke test, deploying and
calling it."""

import json
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log
from wit_world.imports.types import Context, Error


def hello(ctx: Context, params):
    """`hello {"name": "Ada"}` answers `{"message": "hello, Ada", "tenant": ...}`."""
    name = params.get("name") if isinstance(params, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise Err(Error("bad_request", "name must be a string that is not empty"))
    return {"message": f"hello, {name}", "tenant": ctx.tenant}


ACTIONS = {"hello": hello}


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
            raise
        except Exception:
            # A bug: logged, so the host quotes it in the `plugin_trap` it
            # answers, then the instance traps and is replaced.
            log.log(log.Level.ERROR, traceback.format_exc(limit=5))
            raise


class EventHandler(exports.EventHandler):
    def handle_event(self, event) -> None:
        """Events of the topics the manifest subscribes to
        (`permissions: {events: {subscribe: [...]}}`) arrive here. Raise
        `Err(event_handler.Failure_Retry(reason))` to have one delivered
        again later, `Failure_Reject` never to see it again."""
        log.log(log.Level.INFO, f"event {event.id} on {event.topic}")
