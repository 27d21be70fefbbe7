// Example Ferry plugin in JavaScript, built with componentize-js against the
// `service-with-events` world in the repository's `wit/` folder.
//
// Actions: `echo` answers its params and the context it saw (the same shape
// as the Rust `echo`), `whoami` the caller's subject and tenant, `visit`
// counts the tenant's visits in the application's database (the manifest
// grants it), `boom` throws, to show that an exception becomes
// `plugin_trap`, `publish` publishes `{topic, payload}` on the bus, and
// `call` calls `{service, action, params}` and answers `{answer}`.
//
// Events it is subscribed to (`permissions.events.subscribe` in its
// manifest) are published again on `seen.hello-js` with what the delivery
// said; a payload with `retry_until: N` is answered `retry` until attempt
// N, and `reject: true` is rejected.
//
// Build: `make plugins` at the repository root, or `../../sdk/js/build.sh .`

import { log } from 'ferry:plugin/log@0.1.3';
import { execute, query } from 'ferry:plugin/sql@0.1.3';
import { publish } from 'ferry:plugin/events@0.1.3';
import { call } from 'ferry:plugin/services@0.1.3';

// An error for the caller: thrown as `{code, message}`, it becomes the
// `error` of the response.
function failure(code, message) {
  return { code, message };
}

const actions = {
  echo(ctx, params) {
    return {
      params,
      ctx: {
        request_id: ctx.requestId,
        app: ctx.app,
        service: ctx.service,
        tenant: ctx.tenant ?? null,
        subject: ctx.subject ?? null,
        claims: JSON.parse(ctx.claims),
        time_left_ms: Number(ctx.timeLeftMs),
      },
    };
  },

  whoami(ctx) {
    return { subject: ctx.subject ?? null, tenant: ctx.tenant ?? null };
  },

  visit(ctx) {
    if (ctx.tenant === undefined) {
      throw failure('forbidden', 'visits are counted per tenant; the request has none');
    }
    // Portable SQL with `?` placeholders: the same on SQLite, MariaDB and
    // PostgreSQL. Values are always bound, never spliced into the text.
    execute(
      'CREATE TABLE IF NOT EXISTS hello_visits (tenant VARCHAR(128) NOT NULL, at BIGINT NOT NULL)',
      [],
    );
    execute('INSERT INTO hello_visits (tenant, at) VALUES (?, ?)', [
      { tag: 'text', val: ctx.tenant },
      { tag: 'int', val: ctx.timeLeftMs },
    ]);
    const rows = query('SELECT COUNT(*) AS n FROM hello_visits WHERE tenant = ?', [
      { tag: 'text', val: ctx.tenant },
    ]);
    // Integers arrive as BigInt, which JSON cannot carry.
    return { tenant: ctx.tenant, visits: Number(rows.rows[0][0].val) };
  },

  boom() {
    throw new Error('boom requested');
  },

  publish(ctx, params) {
    return { event_id: publish(params.topic, JSON.stringify(params.payload)) };
  },

  // Calls another service (the manifest must list it under
  // `permissions.calls`) and answers what it answered.
  call(ctx, params) {
    const answer = call({
      service: params.service,
      action: params.action,
      params: JSON.stringify(params.params ?? {}),
      timeoutMs: undefined,
    });
    return { answer: JSON.parse(answer) };
  },
};

export const handler = {
  handle(ctx, action, params) {
    if (!Object.hasOwn(actions, action)) {
      const names = Object.keys(actions).join(', ');
      throw failure('not_found', `service \`${ctx.service}\` has no action \`${action}\` (it has: ${names})`);
    }
    let args;
    try {
      args = JSON.parse(params);
    } catch (e) {
      throw failure('bad_request', `invalid params: ${e.message}`);
    }
    try {
      return JSON.stringify(actions[action](ctx, args));
    } catch (e) {
      // An error for the caller: ours, or one the host answered (an import
      // that fails throws an error carrying `payload`).
      if (typeof e?.code === 'string' || e?.payload !== undefined) {
        throw e;
      }
      // Anything else is a bug: log it, so the host quotes it in the
      // `plugin_trap` it answers, and let it trap.
      log('error', `uncaught ${e}\n${e?.stack ?? ''}`);
      throw e;
    }
  },
};

// A handler's failure is thrown as the `failure` variant: `retry` or
// `reject`, with a reason.
export const eventHandler = {
  handleEvent(event) {
    let payload;
    try {
      payload = JSON.parse(event.payload);
    } catch (e) {
      throw { tag: 'reject', val: `the payload is not JSON: ${e.message}` };
    }
    if (payload?.reject === true) {
      throw { tag: 'reject', val: 'asked to reject' };
    }
    if (typeof payload?.retry_until === 'number' && event.attempt < payload.retry_until) {
      throw { tag: 'retry', val: `attempt ${event.attempt} of ${payload.retry_until}` };
    }
    const seen = {
      app: event.app,
      topic: event.topic,
      subscription: event.subscription,
      id: event.id,
      seq: Number(event.seq),
      attempt: event.attempt,
      source_time_ms: Number(event.sourceTimeMs),
      payload,
    };
    try {
      publish('seen.hello-js', JSON.stringify(seen));
    } catch (e) {
      throw { tag: 'retry', val: `cannot publish: ${JSON.stringify(e?.payload ?? String(e))}` };
    }
  },
};
