// {{name}}: a Ferry plugin in JavaScript. `./build.sh` builds {{name}}.wasm
// with componentize-js; see README.md for the smoke test, deploying and
// calling it.

import { log } from 'ferry:plugin/log@0.1.3';

const actions = {
  // `hello {"name": "Ada"}` answers `{"message": "hello, Ada", "tenant": ...}`.
  hello(ctx, params) {
    const name = params?.name;
    if (typeof name !== 'string' || name.trim() === '') {
      throw { code: 'bad_request', message: 'name must be a string that is not empty' };
    }
    return { message: `hello, ${name}`, tenant: ctx.tenant ?? null };
  },
};

export const handler = {
  handle(ctx, action, params) {
    if (!Object.hasOwn(actions, action)) {
      const names = Object.keys(actions).join(', ');
      throw { code: 'not_found', message: `service \`${ctx.service}\` has no action \`${action}\` (it has: ${names})` };
    }
    let args;
    try {
      args = JSON.parse(params);
    } catch (e) {
      throw { code: 'bad_request', message: `invalid params: ${e.message}` };
    }
    try {
      return JSON.stringify(actions[action](ctx, args));
    } catch (e) {
      // An error for the caller (`{code, message}`, or one an import threw).
      if (typeof e?.code === 'string' || e?.payload !== undefined) {
        throw e;
      }
      // A bug: logged, so the host quotes it in the `plugin_trap` it
      // answers, then the instance traps and is replaced.
      log('error', `uncaught ${e}\n${e?.stack ?? ''}`);
      throw e;
    }
  },
};

// Events of the topics the manifest subscribes to (`permissions: {events:
// {subscribe: [...]}}`) arrive here. Throw `{ tag: 'retry', val: reason }`
// to have one delivered again later, `{ tag: 'reject', val: reason }`
// never to see it again.
export const eventHandler = {
  handleEvent(event) {
    log('info', `event ${event.id} on ${event.topic}`);
  },
};
