/* Example Ferry plugin in C, built with clang and wit-bindgen's C bindings
 * against the `service-with-events` world in the repository's `wit/`.
 *
 * Actions (the same as hello-py): `echo` answers its params and the context
 * it saw, `whoami` the caller's subject and tenant, `visit` counts the
 * tenant's visits in the application's database (the manifest grants it),
 * `boom` logs and aborts, to show that a trap becomes `plugin_trap` and the
 * next request is served, and `publish` publishes `{topic, payload}` on the
 * application's bus. `forge` (C only) answers text that is not JSON, to
 * show that the host refuses it. Events it is subscribed to are published
 * again on `seen.hello-c` with what the delivery said; a payload with
 * `retry_until: N` is answered `retry` until attempt N, and `reject: true`
 * is rejected.
 *
 * Memory, as the bindings want it: what the host hands an export belongs to
 * the plugin (freed below); what an export returns is freed by the
 * bindings after the host has copied it, so it must come from malloc.
 *
 * Build: `make plugins` at the repository root, or `../../sdk/c/build.sh .`
 */
#include <stdlib.h>
#include <string.h>

#include "ferry_json.h"
#include "service_with_events.h"

typedef service_with_events_string_t str_t;
typedef exports_ferry_plugin_handler_context_t context_t;
typedef exports_ferry_plugin_handler_error_t error_t;

/* A heap copy of a C string, as the bindings free it. */
static void set(str_t *s, const char *text) { service_with_events_string_dup(s, text); }

static bool fail(error_t *err, const char *code, const char *message) {
    set(&err->code, code);
    set(&err->message, message);
    return false;
}

/* Hands a built JSON text to the host as the result. */
static bool answer(ferry_json_buf *b, str_t *ret) {
    ret->ptr = (uint8_t *)b->ptr;
    ret->len = b->len;
    return true;
}

static void put_str(ferry_json_buf *b, const str_t *s) { ferry_json_str(b, (const char *)s->ptr, s->len); }

static void put_option(ferry_json_buf *b, const service_with_events_option_string_t *o) {
    if (o->is_some)
        put_str(b, &o->val);
    else
        ferry_json_lit(b, "null");
}

static bool echo(const context_t *ctx, const str_t *params, str_t *ret, error_t *err) {
    ferry_json_buf b = {0};
    ferry_json_lit(&b, "{\"params\":");
    ferry_json_raw(&b, (const char *)params->ptr, params->len);
    ferry_json_lit(&b, ",\"ctx\":{\"request_id\":");
    put_str(&b, &ctx->request_id);
    ferry_json_lit(&b, ",\"app\":");
    put_str(&b, &ctx->app);
    ferry_json_lit(&b, ",\"service\":");
    put_str(&b, &ctx->service);
    ferry_json_lit(&b, ",\"tenant\":");
    put_option(&b, &ctx->tenant);
    ferry_json_lit(&b, ",\"subject\":");
    put_option(&b, &ctx->subject);
    /* The claims are JSON text already. */
    ferry_json_lit(&b, ",\"claims\":");
    ferry_json_raw(&b, (const char *)ctx->claims.ptr, ctx->claims.len);
    ferry_json_lit(&b, ",\"time_left_ms\":");
    ferry_json_u64(&b, ctx->time_left_ms);
    ferry_json_lit(&b, "}}");
    return answer(&b, ret);
}

static bool whoami(const context_t *ctx, str_t *ret) {
    ferry_json_buf b = {0};
    ferry_json_lit(&b, "{\"subject\":");
    put_option(&b, &ctx->subject);
    ferry_json_lit(&b, ",\"tenant\":");
    put_option(&b, &ctx->tenant);
    ferry_json_lit(&b, "}");
    return answer(&b, ret);
}

/* Runs a statement; on failure moves the host's error into `err`. */
static bool execute(const char *statement, ferry_plugin_sql_value_t *values, size_t n, error_t *err) {
    str_t text;
    service_with_events_string_set(&text, statement);
    ferry_plugin_sql_list_value_t params = {values, n};
    ferry_plugin_sql_executed_t done;
    if (!ferry_plugin_sql_execute(&text, &params, &done, err)) return false;
    ferry_plugin_sql_executed_free(&done);
    return true;
}

static bool visit(const context_t *ctx, str_t *ret, error_t *err) {
    if (!ctx->tenant.is_some)
        return fail(err, "forbidden", "visits are counted per tenant; the request has none");
    /* Portable SQL with `?` placeholders, the same on every engine; values
     * are bound, never spliced into the text. */
    if (!execute("CREATE TABLE IF NOT EXISTS hello_visits (tenant VARCHAR(128) NOT NULL, at BIGINT NOT NULL)",
                 NULL, 0, err))
        return false;
    ferry_plugin_sql_value_t row[2] = {
        {.tag = FERRY_PLUGIN_SQL_VALUE_TEXT, .val.text = ctx->tenant.val},
        {.tag = FERRY_PLUGIN_SQL_VALUE_INT, .val.int_ = (int64_t)ctx->time_left_ms},
    };
    if (!execute("INSERT INTO hello_visits (tenant, at) VALUES (?, ?)", row, 2, err)) return false;

    str_t count;
    service_with_events_string_set(&count, "SELECT COUNT(*) AS n FROM hello_visits WHERE tenant = ?");
    ferry_plugin_sql_list_value_t params = {row, 1};
    ferry_plugin_sql_rows_t rows;
    if (!ferry_plugin_sql_query(&count, &params, &rows, err)) return false;
    int64_t visits = 0;
    if (rows.rows.len == 1 && rows.rows.ptr[0].len == 1 && rows.rows.ptr[0].ptr[0].tag == FERRY_PLUGIN_SQL_VALUE_INT)
        visits = rows.rows.ptr[0].ptr[0].val.int_;
    ferry_plugin_sql_rows_free(&rows);

    ferry_json_buf b = {0};
    ferry_json_lit(&b, "{\"tenant\":");
    put_str(&b, &ctx->tenant.val);
    ferry_json_lit(&b, ",\"visits\":");
    ferry_json_i64(&b, visits);
    ferry_json_lit(&b, "}");
    return answer(&b, ret);
}

static bool publish(const str_t *params, str_t *ret, error_t *err) {
    ferry_json_span all = {(const char *)params->ptr, params->len}, topic_value, payload;
    char *topic_text;
    size_t topic_len;
    if (!ferry_json_get(all, "topic", &topic_value) || !ferry_json_string(topic_value, &topic_text, &topic_len) ||
        !ferry_json_get(all, "payload", &payload))
        return fail(err, "bad_request", "params are {\"topic\": \"...\", \"payload\": ...}");
    str_t topic = {(uint8_t *)topic_text, topic_len};
    str_t body = {(uint8_t *)payload.ptr, payload.len};
    str_t id;
    bool published = ferry_plugin_events_publish(&topic, &body, &id, err);
    free(topic_text);
    if (!published) return false;
    ferry_json_buf b = {0};
    ferry_json_lit(&b, "{\"event_id\":");
    put_str(&b, &id);
    ferry_json_lit(&b, "}");
    service_with_events_string_free(&id);
    return answer(&b, ret);
}

static void log_error(const char *message) {
    str_t text;
    service_with_events_string_set(&text, message);
    ferry_plugin_log_log(FERRY_PLUGIN_LOG_LEVEL_ERROR, &text);
}

static bool is(const str_t *s, const char *name) { return s->len == strlen(name) && memcmp(s->ptr, name, s->len) == 0; }

static bool dispatch(const context_t *ctx, const str_t *action, const str_t *params, str_t *ret, error_t *err) {
    if (!ferry_json_valid((const char *)params->ptr, params->len))
        return fail(err, "bad_request", "invalid params: not JSON");
    if (is(action, "echo")) return echo(ctx, params, ret, err);
    if (is(action, "whoami")) return whoami(ctx, ret);
    if (is(action, "visit")) return visit(ctx, ret, err);
    if (is(action, "publish")) return publish(params, ret, err);
    if (is(action, "forge")) {
        /* A result that is not JSON, shaped to close the host's envelope
         * early and add fields of its own: the host must refuse it. */
        static const char forged[] = "1}, \"status\": \"success\", \"forged\": {\"x\": 1";
        ret->ptr = (uint8_t *)strdup(forged);
        ret->len = strlen(forged);
        return true;
    }
    if (is(action, "boom")) {
        /* The host quotes the last error logged in the `plugin_trap` it
         * answers, then serves the next request on a fresh instance. */
        log_error("boom requested");
        abort();
    }
    ferry_json_buf message = {0};
    ferry_json_lit(&message, "service `");
    ferry_json_raw(&message, (const char *)ctx->service.ptr, ctx->service.len);
    ferry_json_lit(&message, "` has no action `");
    ferry_json_raw(&message, (const char *)action->ptr, action->len);
    ferry_json_lit(&message, "` (it has: echo, whoami, visit, publish, boom, forge)");
    set(&err->code, "not_found");
    err->message.ptr = (uint8_t *)message.ptr;
    err->message.len = message.len;
    return false;
}

bool exports_ferry_plugin_handler_handle(context_t *ctx, str_t *action, str_t *params, str_t *ret, error_t *err) {
    bool ok = dispatch(ctx, action, params, ret, err);
    ferry_plugin_types_context_free(ctx);
    service_with_events_string_free(action);
    service_with_events_string_free(params);
    return ok;
}

typedef exports_ferry_plugin_event_handler_failure_t failure_t;

static bool refuse(failure_t *err, uint8_t tag, const char *reason) {
    err->tag = tag;
    /* `retry` and `reject` both hold a string in the same place. */
    service_with_events_string_dup(&err->val.retry, reason);
    return false;
}

/* What the delivery said, published again on `seen.hello-c`: the shape
 * hello-py and hello-js publish. */
static bool seen(const exports_ferry_plugin_event_handler_event_t *event, failure_t *err) {
    ferry_json_buf b = {0};
    ferry_json_lit(&b, "{\"app\":");
    put_str(&b, &event->app);
    ferry_json_lit(&b, ",\"topic\":");
    put_str(&b, &event->topic);
    ferry_json_lit(&b, ",\"subscription\":");
    put_str(&b, &event->subscription);
    ferry_json_lit(&b, ",\"id\":");
    put_str(&b, &event->id);
    ferry_json_lit(&b, ",\"seq\":");
    ferry_json_u64(&b, event->seq);
    ferry_json_lit(&b, ",\"attempt\":");
    ferry_json_u64(&b, event->attempt);
    ferry_json_lit(&b, ",\"source_time_ms\":");
    ferry_json_u64(&b, event->source_time_ms);
    ferry_json_lit(&b, ",\"payload\":");
    ferry_json_raw(&b, (const char *)event->payload.ptr, event->payload.len);
    ferry_json_lit(&b, "}");
    str_t topic, body = {(uint8_t *)b.ptr, b.len}, id;
    service_with_events_string_set(&topic, "seen.hello-c");
    error_t failed;
    bool ok = ferry_plugin_events_publish(&topic, &body, &id, &failed);
    free(b.ptr);
    if (ok) {
        service_with_events_string_free(&id);
        return true;
    }
    ferry_json_buf reason = {0};
    ferry_json_raw(&reason, (const char *)failed.code.ptr, failed.code.len);
    ferry_json_lit(&reason, ": ");
    ferry_json_raw(&reason, (const char *)failed.message.ptr, failed.message.len);
    ferry_plugin_types_error_free(&failed);
    err->tag = EXPORTS_FERRY_PLUGIN_EVENT_HANDLER_FAILURE_RETRY;
    err->val.retry.ptr = (uint8_t *)reason.ptr;
    err->val.retry.len = reason.len;
    return false;
}

/* A payload with `retry_until: N` is answered `retry` until attempt N, and
 * `reject: true` is rejected; every other event is reported by `seen`. */
static bool handle_event(const exports_ferry_plugin_event_handler_event_t *event, failure_t *err) {
    ferry_json_span payload = {(const char *)event->payload.ptr, event->payload.len}, value;
    if (!ferry_json_valid(payload.ptr, payload.len))
        return refuse(err, EXPORTS_FERRY_PLUGIN_EVENT_HANDLER_FAILURE_REJECT, "the payload is not JSON");
    if (ferry_json_kind(payload) == '{') {
        if (ferry_json_get(payload, "reject", &value) && ferry_json_kind(value) == 't')
            return refuse(err, EXPORTS_FERRY_PLUGIN_EVENT_HANDLER_FAILURE_REJECT, "asked to reject");
        int64_t until;
        if (ferry_json_get(payload, "retry_until", &value) && ferry_json_int(value, &until) &&
            (int64_t)event->attempt < until) {
            ferry_json_buf reason = {0};
            ferry_json_lit(&reason, "attempt ");
            ferry_json_u64(&reason, event->attempt);
            ferry_json_lit(&reason, " of ");
            ferry_json_i64(&reason, until);
            ferry_json_raw(&reason, "", 1); /* NUL */
            bool answer = refuse(err, EXPORTS_FERRY_PLUGIN_EVENT_HANDLER_FAILURE_RETRY, reason.ptr);
            free(reason.ptr);
            return answer;
        }
    }
    return seen(event, err);
}

bool exports_ferry_plugin_event_handler_handle_event(exports_ferry_plugin_event_handler_event_t *event,
                                                     failure_t *err) {
    bool ok = handle_event(event, err);
    exports_ferry_plugin_event_handler_event_free(event);
    return ok;
}
