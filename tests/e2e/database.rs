//! The `sql` interface end to end, on each engine: the `todo` plugin over
//! HTTP and the socket, tenant isolation, transactions rolled back on trap,
//! timeout and leak, deadlines, value formats, and the grant.

use ferry_tests::services::{mariadb_url, postgres_url};
use ferry_tests::{Ferry, HttpReply, assert_error, expect_error, expect_success};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "database-tests-secret-0123456789abcdef";

fn token(tenant: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({"sub": "tester", "aud": "shop", "exp": now + 600});
    if let Some(tenant) = tenant {
        claims["tenant"] = json!(tenant);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A host whose application `shop` uses the database at `url` (its own
/// SQLite file when `None`), with `todo` and `faulty` granted it.
fn start(url: Option<&str>) -> Ferry {
    start_with(url, "")
}

/// [`start`] with more `database` keys (YAML lines indented six spaces).
fn start_with(url: Option<&str>, more: &str) -> Ferry {
    let database = match url {
        Some(url) => {
            format!("    database:\n      url: {url}\n      acquire_timeout_ms: 1000\n{more}")
        }
        None => String::new(),
    };
    Ferry::options()
        .plugin("todo", "todo", Some("permissions: {database: true}\n"))
        .plugin("faulty", "faulty", Some("permissions: {database: true}\n"))
        .env("FERRY_TEST_SECRET", SECRET)
        .socket("{path: run/ferry.sock, app: shop}")
        .config(&format!(
            "apps:\n  shop:\n    hosts: [shop.localhost]\n    services: [todo, faulty]\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: FERRY_TEST_SECRET\n        tenant_claim: tenant\n{database}"
        ))
        .start()
}

async fn http(ferry: &Ferry, action: &str, token: &str, params: Value) -> HttpReply {
    let auth = format!("Bearer {token}");
    ferry
        .http(
            "POST",
            &format!("/v1/todo/{action}"),
            &[("Host", "shop.localhost"), ("Authorization", &auth)],
            params.to_string().as_bytes(),
        )
        .await
}

async fn socket(ferry: &Ferry, service: &str, action: &str, token: &str, params: Value) -> Value {
    let mut client = ferry.connect().await;
    client
        .request(&json!({"id": 1, "service": service, "action": action, "token": token, "params": params}))
        .await
}

/// Tenant names no earlier run of the tests has used: the MariaDB and
/// PostgreSQL databases outlive a test run.
fn unique(prefix: &str, engine: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{engine}-{}-{nanos}", std::process::id())
}

async fn todo_round_trip(engine: &str, url: Option<&str>) {
    let ferry = start(url);
    let acme = token(Some(&unique("acme", engine)));
    let globex = token(Some(&unique("globex", engine)));

    // Create over HTTP, read back over the socket.
    let reply = http(&ferry, "create", &acme, json!({"title": "buy milk"})).await;
    assert_eq!(reply.status, 200, "{engine}: {}", reply.text());
    let milk = reply.json();
    assert_eq!(
        (&milk["title"], &milk["done"]),
        (&json!("buy milk"), &json!(false)),
        "{engine}"
    );
    let id = milk["id"].as_str().unwrap().to_owned();
    let got = socket(&ferry, "todo", "get", &acme, json!({"id": id})).await;
    assert_eq!(expect_success(&got), &milk, "{engine}");

    let reply = http(&ferry, "create", &acme, json!({"title": "walk the dog"})).await;
    let dog = reply.json();
    let list = socket(&ferry, "todo", "list", &acme, json!({})).await;
    assert_eq!(
        expect_success(&list)["items"],
        json!([milk, dog]),
        "{engine}"
    );

    // Partial updates keep the other field.
    let reply = http(&ferry, "update", &acme, json!({"id": id, "done": true})).await;
    assert_eq!(
        reply.json(),
        json!({"id": id, "title": "buy milk", "done": true}),
        "{engine}"
    );
    let updated = socket(
        &ferry,
        "todo",
        "update",
        &acme,
        json!({"id": id, "title": "buy oat milk"}),
    )
    .await;
    assert_eq!(
        expect_success(&updated),
        &json!({"id": id, "title": "buy oat milk", "done": true}),
        "{engine}"
    );

    // Another tenant sees nothing and changes nothing.
    for (action, params) in [
        ("get", json!({"id": id})),
        ("update", json!({"id": id, "done": false})),
        ("delete", json!({"id": id})),
    ] {
        let reply = http(&ferry, action, &globex, params).await;
        assert_error(&reply, 404, "not_found");
    }
    let list = socket(&ferry, "todo", "list", &globex, json!({})).await;
    assert_eq!(expect_success(&list)["items"], json!([]), "{engine}");
    let got = socket(&ferry, "todo", "get", &acme, json!({"id": id})).await;
    assert_eq!(
        expect_success(&got)["done"],
        true,
        "{engine}: globex changed acme's row"
    );

    // Delete, then it is gone.
    let reply = http(&ferry, "delete", &acme, json!({"id": id})).await;
    assert_eq!(reply.json(), json!({"deleted": id}), "{engine}");
    assert_error(
        &http(&ferry, "get", &acme, json!({"id": id})).await,
        404,
        "not_found",
    );
    assert_error(
        &http(&ferry, "delete", &acme, json!({"id": id})).await,
        404,
        "not_found",
    );
    let list = socket(&ferry, "todo", "list", &acme, json!({})).await;
    assert_eq!(expect_success(&list)["items"], json!([dog]), "{engine}");

    // No tenant, no items; bad params are the caller's fault.
    assert_error(
        &http(&ferry, "list", &token(None), json!({})).await,
        403,
        "forbidden",
    );
    assert_error(
        &http(&ferry, "create", &acme, json!({})).await,
        400,
        "bad_request",
    );
    assert_error(
        &http(&ferry, "create", &acme, json!({"title": " "})).await,
        400,
        "bad_request",
    );

    // Values that look like SQL stay values.
    let sneaky = "x'); DROP TABLE todo_items; --";
    let reply = http(&ferry, "create", &acme, json!({"title": sneaky})).await;
    assert_eq!(reply.json()["title"], sneaky, "{engine}");
    let list = socket(&ferry, "todo", "list", &acme, json!({})).await;
    assert_eq!(
        expect_success(&list)["items"].as_array().unwrap().len(),
        2,
        "{engine}"
    );

    transactions_roll_back(&ferry, engine, &acme).await;
}

/// A transaction is rolled back when the plugin traps, times out, or
/// returns without committing; a committed one stays.
async fn transactions_roll_back(ferry: &Ferry, engine: &str, token: &str) {
    let name = |case: &str| unique(case, engine);
    let count = async |name: &str| -> i64 {
        let response = socket(ferry, "faulty", "count", token, json!({"name": name})).await;
        expect_success(&response)["count"].as_i64().unwrap()
    };

    let trapped = name("trap");
    let response = socket(
        ferry,
        "faulty",
        "write_then_panic",
        token,
        json!({"name": trapped}),
    )
    .await;
    assert!(
        expect_error(&response, "plugin_trap").contains("panicked before commit"),
        "{engine}"
    );
    assert_eq!(
        count(&trapped).await,
        0,
        "{engine}: a trapped transaction's row is visible"
    );

    let hung = name("hang");
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 2, "service": "faulty", "action": "write_then_hang", "token": token, "timeout_ms": 500, "params": {"name": hung}}))
        .await;
    expect_error(&response, "timeout");
    assert_eq!(
        count(&hung).await,
        0,
        "{engine}: a timed-out transaction's row is visible"
    );

    let forgotten = name("forget");
    let response = socket(
        ferry,
        "faulty",
        "write_then_forget",
        token,
        json!({"name": forgotten}),
    )
    .await;
    expect_success(&response);
    assert_eq!(
        count(&forgotten).await,
        0,
        "{engine}: a leaked transaction's row is visible"
    );

    let kept = name("commit");
    let response = socket(ferry, "faulty", "write", token, json!({"name": kept})).await;
    expect_success(&response);
    assert_eq!(
        count(&kept).await,
        1,
        "{engine}: a committed row is missing"
    );

    // And the rows of the leaked transaction did not slip into this one.
    assert_eq!(count(&forgotten).await, 0, "{engine}");
}

#[tokio::test(flavor = "multi_thread")]
async fn todo_on_sqlite() {
    todo_round_trip("sqlite", None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn todo_on_mariadb() {
    let Some(url) = mariadb_url() else { return };
    todo_round_trip("mariadb", Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn todo_on_postgres() {
    let Some(url) = postgres_url() else { return };
    todo_round_trip("postgres", Some(&url)).await;
}

async fn run_sql(ferry: &Ferry, statement: &str, timeout_ms: u64) -> Value {
    let mut client = ferry.connect().await;
    client
        .request(&json!({"id": 1, "service": "faulty", "action": "run_sql", "token": token(Some("t")), "timeout_ms": timeout_ms, "params": {"statement": statement}}))
        .await
}

/// A statement still running at the request's deadline answers `timeout`
/// on time, and the pool serves the next request.
async fn deadline_cuts_a_slow_statement(engine: &str, url: &str, sleep: &str) {
    let ferry = start(Some(url));
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let response = run_sql(&ferry, sleep, 400).await;
        let took = started.elapsed();
        expect_error(&response, "timeout");
        assert!(
            took < std::time::Duration::from_millis(900),
            "{engine}: answered after {took:?}"
        );
    }
    let response = run_sql(&ferry, "SELECT 1 AS one", 2000).await;
    assert_eq!(expect_success(&response)["rows"], json!([[1]]), "{engine}");
}

/// The server's own `statement_timeout_ms` answers `timeout` too, and
/// leaves the connection fit for the next statement.
async fn server_limit_answers_timeout(engine: &str, url: &str, sleep: &str) {
    let ferry = start_with(
        Some(url),
        "      statement_timeout_ms: 300\n      max_connections: 1\n",
    );
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let message = expect_error(&run_sql(&ferry, sleep, 5000).await, "timeout");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1500),
            "{engine}: {message} after {:?}",
            started.elapsed()
        );
        let response = run_sql(&ferry, "SELECT 3 AS three", 2000).await;
        assert_eq!(expect_success(&response)["rows"], json!([[3]]), "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_timeouts_on_postgres() {
    let Some(url) = postgres_url() else { return };
    server_limit_answers_timeout("postgres", &url, "SELECT pg_sleep(3) AS slept").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_timeouts_on_mariadb() {
    let Some(url) = mariadb_url() else { return };
    server_limit_answers_timeout("mariadb", &url, "SELECT SLEEP(3) AS slept").await;
}

/// The server stops working on a statement cut off at its deadline soon
/// after, long before its own `statement_timeout` (5 s here).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_cancels_a_statement_cut_off_at_its_deadline() {
    let Some(url) = postgres_url() else { return };
    let ferry = start(Some(&url));
    let marker = unique("sleep", "postgres");
    let sleep = format!("SELECT pg_sleep(5) AS \"{marker}\"");
    expect_error(&run_sql(&ferry, &sleep, 300).await, "timeout");
    let cut_off = std::time::Instant::now();
    let running = format!(
        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE query = '{}'",
        sleep.replace('\'', "''")
    );
    loop {
        let response = run_sql(&ferry, &running, 2000).await;
        if expect_success(&response)["rows"] == json!([[0]]) {
            break;
        }
        assert!(
            cut_off.elapsed() < std::time::Duration::from_millis(2000),
            "the server still runs the statement {:?} after its deadline",
            cut_off.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!(
        "the server let go of the statement {:?} after its deadline",
        cut_off.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deadlines_cancel_statements_on_mariadb() {
    let Some(url) = mariadb_url() else { return };
    deadline_cuts_a_slow_statement("mariadb", &url, "SELECT SLEEP(5) AS slept").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deadlines_cancel_statements_on_postgres() {
    let Some(url) = postgres_url() else { return };
    deadline_cuts_a_slow_statement("postgres", &url, "SELECT pg_sleep(5) AS slept").await;
}

/// Generous: this test is about formats, and the database servers are
/// shared with the tests running beside it (one CI run saw MariaDB take
/// 2 s for a constant `SELECT`).
const FORMATS_TIMEOUT_MS: u64 = 15_000;

#[tokio::test(flavor = "multi_thread")]
async fn values_come_back_typed_and_in_the_documented_formats() {
    let ferry = start(None);
    let response = run_sql(
        &ferry,
        "SELECT 1 AS i, 1.5 AS f, 'x' AS t, NULL AS n, X'0102' AS b",
        FORMATS_TIMEOUT_MS,
    )
    .await;
    let result = expect_success(&response);
    assert_eq!(result["columns"], json!(["i", "f", "t", "n", "b"]));
    assert_eq!(
        result["rows"],
        json!([[1, 1.5, "x", null, {"blob": [1, 2]}]])
    );

    if let Some(url) = postgres_url() {
        let ferry = start(Some(&url));
        let response = run_sql(
            &ferry,
            "SELECT true AS yes, 7::int2 AS small, 12.50::numeric(10,2) AS price, DATE '2026-11-21' AS day, TIME '13:45:00.25' AS at, TIMESTAMP '2026-11-21 13:45:00' AS local, TIMESTAMPTZ '2026-11-21 14:45:00+01' AS utc, '\\x0102'::bytea AS b, 'é'::varchar AS v",
            FORMATS_TIMEOUT_MS,
        )
        .await;
        assert_eq!(
            expect_success(&response)["rows"],
            json!([[true, 7, "12.50", "2026-11-21", "13:45:00.250000", "2026-11-21T13:45:00", "2026-11-21T13:45:00Z", {"blob": [1, 2]}, "é"]])
        );
        let response = run_sql(&ferry, "SELECT '{}'::jsonb AS j", FORMATS_TIMEOUT_MS).await;
        assert!(expect_error(&response, "bad_request").contains("cast it to text"));
    }
    if let Some(url) = mariadb_url() {
        let ferry = start(Some(&url));
        let response = run_sql(
            &ferry,
            "SELECT CAST(12.50 AS DECIMAL(10,2)) AS price, DATE '2026-11-21' AS day, CAST('2026-11-21 13:45:00' AS DATETIME) AS local, CAST(7 AS UNSIGNED) AS n, 'é' AS v",
            FORMATS_TIMEOUT_MS,
        )
        .await;
        assert_eq!(
            expect_success(&response)["rows"],
            json!([["12.50", "2026-11-21", "2026-11-21T13:45:00", 7, "é"]])
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_without_the_grant_is_forbidden_the_database() {
    let ferry = Ferry::options().plugin("faulty", "faulty", None).start();
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": 1, "service": "faulty", "action": "count", "params": {"name": "x"}}))
        .await;
    let message = expect_error(&response, "forbidden");
    assert!(
        message.contains("permissions: {database: true}"),
        "{message}"
    );

    // A statement the database refuses is the caller's error, and the
    // connection stays usable.
    let ferry = start(None);
    let response = run_sql(&ferry, "SELEC nonsense", 2000).await;
    expect_error(&response, "bad_request");
    let response = run_sql(&ferry, "SELECT 2 AS two", 2000).await;
    assert_eq!(expect_success(&response)["rows"], json!([[2]]));
}
