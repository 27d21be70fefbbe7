/* {{name}}: a Ferry plugin in C. `./build.sh` builds {{name}}.wasm with
 * clang and wit-bindgen's C bindings; see README.md for the smoke test,
 * deploying and calling it.
 *
 * What the host hands an export belongs to the plugin (freed below); what
 * an export returns is freed by the bindings, so it must come from malloc
 * (`service_with_events_string_dup`, or a `ferry_json_buf`). */
#include <stdlib.h>
#include <string.h>

#include "ferry_json.h"
#include "service_with_events.h"

typedef service_with_events_string_t str_t;

static bool fail(exports_ferry_plugin_handler_error_t *err, const char *code, const char *message) {
    service_with_events_string_dup(&err->code, code);
    service_with_events_string_dup(&err->message, message);
    return false;
}

/* `hello {"name": "Ada"}` answers `{"message": "hello, Ada", "tenant": ...}`. */
static bool hello(const exports_ferry_plugin_handler_context_t *ctx, const str_t *params, str_t *ret,
                  exports_ferry_plugin_handler_error_t *err) {
    ferry_json_span all = {(const char *)params->ptr, params->len}, value;
    char *name;
    size_t len;
    if (!ferry_json_get(all, "name", &value) || !ferry_json_string(value, &name, &len))
        return fail(err, "bad_request", "name must be a string that is not empty");
    size_t blank = strspn(name, " \t\r\n");
    if (blank == len) {
        free(name);
        return fail(err, "bad_request", "name must be a string that is not empty");
    }
    ferry_json_buf b = {0};
    ferry_json_lit(&b, "{\"message\":");
    ferry_json_buf message = {0};
    ferry_json_lit(&message, "hello, ");
    ferry_json_raw(&message, name, len);
    ferry_json_str(&b, message.ptr, message.len);
    free(message.ptr);
    free(name);
    ferry_json_lit(&b, ",\"tenant\":");
    if (ctx->tenant.is_some)
        ferry_json_str(&b, (const char *)ctx->tenant.val.ptr, ctx->tenant.val.len);
    else
        ferry_json_lit(&b, "null");
    ferry_json_lit(&b, "}");
    ret->ptr = (uint8_t *)b.ptr;
    ret->len = b.len;
    return true;
}

static bool is(const str_t *s, const char *name) { return s->len == strlen(name) && memcmp(s->ptr, name, s->len) == 0; }

bool exports_ferry_plugin_handler_handle(exports_ferry_plugin_handler_context_t *ctx, str_t *action, str_t *params,
                                         str_t *ret, exports_ferry_plugin_handler_error_t *err) {
    bool ok;
    if (!ferry_json_valid((const char *)params->ptr, params->len))
        ok = fail(err, "bad_request", "invalid params: not JSON");
    else if (is(action, "hello"))
        ok = hello(ctx, params, ret, err);
    else
        ok = fail(err, "not_found", "no such action (this service has: hello)");
    ferry_plugin_types_context_free(ctx);
    service_with_events_string_free(action);
    service_with_events_string_free(params);
    return ok;
}

/* Events of the topics the manifest subscribes to
 * (`permissions: {events: {subscribe: [...]}}`) arrive here. Answer false
 * with `err->tag = EXPORTS_FERRY_PLUGIN_EVENT_HANDLER_FAILURE_RETRY` (and a
 * reason in `err->val.retry`) to have one delivered again later. */
bool exports_ferry_plugin_event_handler_handle_event(exports_ferry_plugin_event_handler_event_t *event,
                                                     exports_ferry_plugin_event_handler_failure_t *err) {
    exports_ferry_plugin_event_handler_event_free(event);
    return true;
}
