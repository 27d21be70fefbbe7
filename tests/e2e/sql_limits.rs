//! What plugin SQL may not do, end to end through the `faulty` plugin's
//! `run_sql`: reach past its application's SQLite file (ATTACH, VACUUM
//! INTO, extensions, PRAGMAs that change the connection), keep a statement
//! running after its deadline, leave session settings behind for the next
//! request (PostgreSQL, MariaDB), hold more rows in the host than
//! `max_result_bytes`, or hold more than `max_open_transactions`; and
//! which `?` the host takes for a placeholder on PostgreSQL.

use std::time::{Duration, Instant};

use ferry_tests::services::{mariadb_url, postgres_url};
use ferry_tests::{Ferry, expect_error, expect_success};
use serde_json::{Value, json};

/// A host with two open applications, `shop` and `blog`, each with the
/// `faulty` plugin granted its own database; `database` is YAML for shop's
/// `database` block (indented six spaces), empty for its SQLite file.
fn start(database: &str) -> Ferry {
    Ferry::options()
        .plugin("faulty", "faulty", Some("permissions: {database: true}\n"))
        .socket("{path: run/ferry.sock, app: shop}")
        .config(&format!(
            "apps:\n  shop:\n    services: [faulty]\n    auth: none\n{database}  blog:\n    services: [faulty]\n    auth: none\n"
        ))
        .start()
}

async fn run_sql(ferry: &Ferry, app: &str, statement: &str, timeout_ms: u64) -> Value {
    let mut client = ferry.connect().await;
    client
        .request(&json!({"id": 1, "app": app, "service": "faulty", "action": "run_sql", "timeout_ms": timeout_ms, "params": {"statement": statement}}))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_statements_cannot_reach_past_their_own_file() {
    let ferry = start("");
    // Both files exist: blog writes to its own.
    expect_success(&run_sql(&ferry, "blog", "CREATE TABLE secrets (s TEXT)", 2000).await);
    expect_success(
        &run_sql(
            &ferry,
            "blog",
            "INSERT INTO secrets VALUES ('blog only') RETURNING s",
            2000,
        )
        .await,
    );
    let blog = ferry.dir.join("data/db/blog.sqlite");
    assert!(blog.exists());
    let outside = ferry.dir.join("copied.sqlite");
    for statement in [
        format!("ATTACH '{}' AS other", blog.display()),
        format!("VACUUM INTO '{}'", outside.display()),
        "VACUUM".to_owned(),
        "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libm.so.6')".to_owned(),
        "PRAGMA journal_mode = DELETE".to_owned(),
        "PRAGMA user_version = 7".to_owned(),
        "PRAGMA query_only = 1".to_owned(),
        "DETACH main".to_owned(),
    ] {
        let response = run_sql(&ferry, "shop", &statement, 2000).await;
        expect_error(&response, "forbidden");
    }
    assert!(!outside.exists(), "VACUUM INTO wrote a file");
    // Reading PRAGMAs still work.
    expect_success(&run_sql(&ferry, "shop", "CREATE TABLE mine (m TEXT)", 2000).await);
    let info = run_sql(&ferry, "shop", "PRAGMA table_info(mine)", 2000).await;
    assert_eq!(expect_success(&info)["rows"][0][1], "m");
    let version = run_sql(&ferry, "shop", "PRAGMA user_version", 2000).await;
    assert_eq!(expect_success(&version)["rows"][0][0], 0);
    // And nothing of blog's is visible from shop.
    let response = run_sql(&ferry, "shop", "SELECT s FROM secrets", 2000).await;
    expect_error(&response, "bad_request");
}

/// CPU time the host process used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / 100)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_statement_stops_at_its_deadline() {
    let ferry = start("");
    // Counts without end: only an interrupt stops it.
    let endless =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let began = Instant::now();
    let response = run_sql(&ferry, "shop", endless, 300).await;
    expect_error(&response, "timeout");
    let answered = began.elapsed();
    assert!(
        answered < Duration::from_millis(600),
        "answered after {answered:?}"
    );
    // Right after the answer the host is idle: the statement is not still
    // running on a database thread.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = cpu_time(ferry.pid());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let used = cpu_time(ferry.pid()) - before;
    assert!(
        used < Duration::from_millis(150),
        "the host used {used:?} of CPU after the timeout"
    );
    // The pool has nothing busy: every open connection is idle.
    let status = ferry.status().await;
    let shop = status["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "shop")
        .unwrap()
        .clone();
    assert_eq!(
        shop["database"]["connections"], shop["database"]["idle"],
        "{shop}"
    );
    expect_success(&run_sql(&ferry, "shop", "SELECT 1", 2000).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_over_max_result_bytes_answer_too_large_and_transactions_are_bounded() {
    let ferry =
        start("    database:\n      max_result_bytes: 4096\n      max_open_transactions: 3\n");
    let many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000) SELECT x, 'forty bytes of padding in every row....' FROM c";
    let message = expect_error(&run_sql(&ferry, "shop", many, 2000).await, "too_large");
    assert!(message.contains("max_result_bytes"), "{message}");
    let few = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20) SELECT x FROM c";
    assert_eq!(
        expect_success(&run_sql(&ferry, "shop", few, 2000).await)["rows"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
    let mut client = ferry.connect().await;
    let hold = |count: u32| json!({"id": 1, "service": "faulty", "action": "hold_transactions", "params": {"count": count}});
    assert_eq!(expect_success(&client.request(&hold(3)).await)["held"], 3);
    let message = expect_error(&client.request(&hold(4)).await, "too_large");
    assert!(message.contains("max_open_transactions"), "{message}");
    // They were all released with their request.
    assert_eq!(expect_success(&client.request(&hold(3)).await)["held"], 3);
}

/// A setting changed by one request is back to the host's for the next,
/// on one connection (the pool holds only one).
async fn session_settings_do_not_leak(url: &str, change: &[&str], read: &str, host_value: &str) {
    let ferry = start(&format!(
        "    database:\n      url: {url}\n      max_connections: 1\n      statement_timeout_ms: 4000\n"
    ));
    let before = run_sql(&ferry, "shop", read, 2000).await;
    assert_eq!(
        expect_success(&before)["rows"][0][0]
            .to_string()
            .trim_matches('"'),
        host_value
    );
    for statement in change {
        expect_success(&run_sql(&ferry, "shop", statement, 2000).await);
    }
    let after = run_sql(&ferry, "shop", read, 2000).await;
    assert_eq!(
        expect_success(&after)["rows"][0][0]
            .to_string()
            .trim_matches('"'),
        host_value,
        "a later request saw what an earlier one set"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_session_settings_do_not_leak_between_requests() {
    let Some(url) = postgres_url() else { return };
    session_settings_do_not_leak(
        &url,
        &["SET statement_timeout = 0"],
        "SHOW statement_timeout",
        "4s",
    )
    .await;
    session_settings_do_not_leak(
        &url,
        &["SET search_path = pg_catalog"],
        "SHOW search_path",
        "\\\"$user\\\", public",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_session_settings_do_not_leak_between_requests() {
    let Some(url) = mariadb_url() else { return };
    session_settings_do_not_leak(
        &url,
        &["SET SESSION max_statement_time = 0"],
        "SELECT @@SESSION.max_statement_time",
        "4.0",
    )
    .await;
    session_settings_do_not_leak(
        &url,
        &["SET SESSION autocommit = 0"],
        "SELECT @@SESSION.autocommit",
        "1",
    )
    .await;
}

/// Plugins write `?` for placeholders on every engine, and the host numbers
/// them for PostgreSQL. A `?` that PostgreSQL reads as part of a string, a
/// comment or an operator must stay as it is: each statement here binds no
/// parameter, so one miscounted `?` fails it or changes its answer.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_question_marks_in_strings_comments_and_operators_stay() {
    let Some(url) = postgres_url() else { return };
    let ferry = start(&format!("    database:\n      url: {url}\n"));
    for (statement, answer) in [
        ("SELECT $$ ? $$", json!(" ? ")),
        ("SELECT $tag$ it's ? $$ ? $tag$", json!(" it's ? $$ ? ")),
        (r"SELECT E'\' ?'", json!("' ?")),
        ("SELECT /* a /* ? */ ? */ 7", json!(7)),
        (
            r#"SELECT '{"a": 1}'::jsonb ?| array['a', 'b']"#,
            json!(true),
        ),
        (
            r#"SELECT '{"a": 1}'::jsonb ?& array['a', 'b']"#,
            json!(false),
        ),
        (r#"SELECT '{"a": 1}'::jsonb ?? 'a'"#, json!(true)),
    ] {
        let response = run_sql(&ferry, "shop", statement, 2000).await;
        assert_eq!(
            expect_success(&response)["rows"][0][0],
            answer,
            "{statement}"
        );
    }
}
