//! Supervision: a trap storm opens a plugin's circuit and recovery closes
//! it again, failing health checks count as failures, and a config reload
//! (SIGHUP or `ferry reload`) changes applications and limits without
//! dropping a connection, or changes nothing when the file is bad.

use std::process::Command;
use std::time::Duration;

use ferry_tests::{Ferry, eventually, expect_error, expect_success, ferry_bin, service_status};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn faulty(action: &str) -> Value {
    json!({"id": 1, "service": "faulty", "action": action})
}

async fn circuit(ferry: &Ferry) -> Value {
    service_status(&ferry.status().await, "faulty")["circuit"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_storm_opens_the_circuit_and_recovery_closes_it() {
    let ferry = Ferry::options()
        .plugin(
            "faulty",
            "faulty",
            Some("circuit: {failures: 5, window_ms: 10000, backoff_ms: 3000}\nhealth_interval_ms: 50\n"),
        )
        .start();
    let mut client = ferry.connect().await;
    for _ in 0..5 {
        expect_error(&client.request(&faulty("trap")).await, "plugin_trap");
    }
    let open = circuit(&ferry).await;
    assert_eq!(open["state"], "open", "{open}");
    assert_eq!(open["opens"], 1);
    assert!(
        open["last_failure"].as_str().unwrap().contains("trapped"),
        "{open}"
    );

    // Refused at once, with a hint of when to come back, on both doors.
    let reached = ferry.plugin_requests("faulty").await;
    let response = client.request(&faulty("ok")).await;
    let message = expect_error(&response, "unavailable");
    assert!(message.contains("circuit is open"), "{message}");
    let retry = response["error"]["retry_after_ms"].as_u64().unwrap();
    assert!((1..=3001).contains(&retry), "{response}");
    let reply = ferry.http("POST", "/v1/faulty/ok", &[], b"").await;
    assert_eq!(reply.status, 503);
    let seconds: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&seconds), "{reply:?}");
    assert_eq!(
        ferry.plugin_requests("faulty").await,
        reached,
        "a refused request ran"
    );
    let stats = service_status(&ferry.status().await, "faulty")["stats"].clone();
    assert!(stats["refused"].as_u64().unwrap() >= 2, "{stats}");

    // After the back-off the health check passes, but only a request can
    // show the handler works: the circuit waits half-open for one.
    eventually("the health check lets a probe through", WAIT, async || {
        (circuit(&ferry).await["state"] == "half_open").then_some(())
    })
    .await;
    expect_success(&client.request(&faulty("ok")).await);
    assert_eq!(circuit(&ferry).await["state"], "closed");
    expect_success(&client.request(&faulty("ok")).await);

    // Failing again right after recovering backs off twice as long.
    for _ in 0..5 {
        client.request(&faulty("trap")).await;
    }
    let reopened = circuit(&ferry).await;
    assert_eq!(reopened["state"], "open", "{reopened}");
    assert_eq!(reopened["opens"], 2);
    assert_eq!(reopened["backoff_ms"], 6000);

    // `ferry status` shows it.
    let out = Command::new(ferry_bin())
        .args(["status", "--admin", &ferry.admin.unwrap().to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("faulty: circuit open"), "{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_probe_reopens_the_circuit_for_longer() {
    let ferry = Ferry::options()
        .plugin(
            "faulty",
            "faulty",
            Some("circuit: {failures: 2, backoff_ms: 300}\nhealth_interval_ms: 20\n"),
        )
        .start();
    let mut client = ferry.connect().await;
    for _ in 0..2 {
        client.request(&faulty("trap")).await;
    }
    eventually("the circuit is half-open", WAIT, async || {
        (circuit(&ferry).await["state"] == "half_open").then_some(())
    })
    .await;
    // The probe traps: open again, for twice as long.
    expect_error(&client.request(&faulty("trap")).await, "plugin_trap");
    let circuit = circuit(&ferry).await;
    assert_eq!(circuit["state"], "open", "{circuit}");
    assert_eq!(circuit["backoff_ms"], 600, "{circuit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_health_checks_open_the_circuit_without_any_request() {
    let ferry = Ferry::options()
        .plugin(
            "faulty",
            "faulty",
            Some("config: {health: fail}\nhealth_interval_ms: 20\ncircuit: {failures: 3, backoff_ms: 60000}\n"),
        )
        .start();
    eventually("failing health checks open the circuit", WAIT, async || {
        (circuit(&ferry).await["state"] == "open").then_some(())
    })
    .await;
    let status = service_status(&ferry.status().await, "faulty");
    assert_eq!(status["health"]["last_ok"], false, "{status}");
    assert!(
        status["health"]["last_error"]
            .as_str()
            .unwrap()
            .contains("configured to fail its health check"),
        "{status}"
    );
    assert_eq!(status["stats"]["requests"], 0);
    let mut client = ferry.connect().await;
    expect_error(&client.request(&faulty("ok")).await, "unavailable");

    // A health check that traps counts the same.
    let ferry = Ferry::options()
        .plugin(
            "faulty",
            "faulty",
            Some("config: {health: panic}\nhealth_interval_ms: 20\ncircuit: {failures: 2}\n"),
        )
        .start();
    eventually(
        "a trapping health check opens the circuit",
        WAIT,
        async || (circuit(&ferry).await["state"] == "open").then_some(()),
    )
    .await;
    let status = service_status(&ferry.status().await, "faulty");
    assert!(
        status["health"]["last_error"]
            .as_str()
            .unwrap()
            .contains("configured to panic"),
        "{status}"
    );
}

fn reload(ferry: &Ferry) -> (bool, String) {
    let out = Command::new(ferry_bin())
        .args(["reload", "--config", ferry.config_path().to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn host_status(ferry: &Ferry, host: &str) -> u16 {
    ferry
        .http("POST", "/v1/echo/echo", &[("Host", host)], b"{}")
        .await
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_changes_apps_and_limits_without_dropping_connections() {
    let shop =
        "apps:\n  shop:\n    hosts: [shop.localhost]\n    services: [echo]\n    auth: none\n";
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .config(shop)
        .start();
    let mut client = ferry.connect().await;
    let echo = json!({"id": 1, "app": "shop", "service": "echo", "action": "echo"});
    expect_success(&client.request(&echo).await);
    assert_eq!(host_status(&ferry, "blog.localhost").await, 404);
    let version = service_status(&ferry.status().await, "echo")["version"].clone();

    // A new application and new default limits.
    ferry.rewrite_config(&format!(
        "{shop}  blog:\n    hosts: [blog.localhost]\n    services: [echo]\n    auth: none\ndefaults: {{timeout_ms: 1234}}\n"
    ));
    let (ok, said) = reload(&ferry);
    assert!(ok, "{said}");
    assert!(said.contains("applications: blog, shop"), "{said}");
    assert!(said.contains("plugins reloaded: echo"), "{said}");
    // The same connection goes on; the new settings are in force.
    expect_success(&client.request(&echo).await);
    assert_eq!(host_status(&ferry, "blog.localhost").await, 200);
    let status = service_status(&ferry.status().await, "echo");
    assert_eq!(status["limits"]["timeout_ms"], 1234);
    assert_eq!(status["version"], version, "same file, same version");

    // A bad file changes nothing, and says why.
    ferry.rewrite_config(&format!(
        "{shop}  blog: {{hosts: [x], services: [echo], auht: none}}\n"
    ));
    let (ok, said) = reload(&ferry);
    assert!(!ok, "{said}");
    assert!(
        said.contains("reload refused") && said.contains("auht"),
        "{said}"
    );
    assert_eq!(host_status(&ferry, "blog.localhost").await, 200);
    expect_success(&client.request(&echo).await);
    // One that reads well but whose key the host cannot load: the host
    // itself refuses it.
    ferry.rewrite_config(&format!(
        "{shop}  blog:\n    services: [echo]\n    auth: {{jwt: {{algorithms: [HS256], secret_env: FERRY_TEST_UNSET_SECRET}}}}\n"
    ));
    let (ok, said) = reload(&ferry);
    assert!(!ok, "{said}");
    assert!(
        said.contains("reload refused") && said.contains("FERRY_TEST_UNSET_SECRET"),
        "{said}"
    );
    assert_eq!(host_status(&ferry, "blog.localhost").await, 200);

    // SIGHUP does the same as `ferry reload`; settings that belong to open
    // sockets wait for a restart.
    ferry.rewrite_config(&format!("{shop}max_connections: 7\n"));
    unsafe {
        libc::kill(ferry.pid() as i32, libc::SIGHUP);
    }
    eventually("SIGHUP reloads the config", WAIT, async || {
        (host_status(&ferry, "blog.localhost").await == 404).then_some(())
    })
    .await;
    let restart_only =
        "changed in the config, but takes effect only on restart key=\"max_connections\"";
    assert!(
        ferry.log_with(restart_only).await.contains(restart_only),
        "{}",
        ferry.log()
    );
    expect_success(&client.request(&echo).await);
    let status = service_status(&ferry.status().await, "echo");
    assert_eq!(status["limits"]["timeout_ms"], 5000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_a_manifest_cannot_live_with_changes_nothing() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", Some("circuit: {max_backoff_ms: 2000}\n"))
        .start();
    ferry.rewrite_config("defaults: {timeout_ms: 777, circuit: {backoff_ms: 5000}}\n");
    let (ok, said) = reload(&ferry);
    assert!(!ok, "{said}");
    assert!(
        said.contains("under the new defaults") && said.contains("echo.yaml"),
        "{said}"
    );
    let status = service_status(&ferry.status().await, "echo");
    assert_eq!(status["limits"]["timeout_ms"], 5000, "{status}");
}
