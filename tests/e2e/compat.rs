//! Plugins built against an earlier WIT keep loading and answering: the
//! fixture `tests/fixtures/echo-wit-0.1.0.wasm` is the `echo` example as it
//! was built against `ferry:plugin@0.1.0` (the `service` world, context as
//! a record), before the `plugin` world and its on-demand context existed;
//! `echo-wit-0.1.1.wasm` is `echo` as built against `ferry:plugin@0.1.1`
//! (the `plugin-with-health` world), before the `events` interfaces;
//! `echo-wit-0.1.2.wasm` is `echo` as built against `ferry:plugin@0.1.2`
//! (the `plugin-with-events` world), whose entry point is lent the call
//! with every request, before `request-handler` and `invocation.current`.
//! Each WIT change must keep these tests passing.

use ferry_tests::{Ferry, expect_success, ferry_bin, fixture};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_against_wit_0_1_0_loads_and_answers() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .start_with(|deploy| {
            std::fs::copy(fixture("echo-wit-0.1.0.wasm"), deploy.join("old.wasm")).unwrap();
        });
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({
            "id": "c-1", "service": "old", "action": "echo",
            "params": {"hello": "world"}, "tenant_id": "acme", "timeout_ms": 2000
        }))
        .await;
    let result = expect_success(&response);
    assert_eq!(result["params"], json!({"hello": "world"}));
    assert_eq!(result["ctx"]["request_id"], "\"c-1\"");
    assert_eq!(result["ctx"]["service"], "old");
    assert_eq!(result["ctx"]["app"], "default");
    assert_eq!(result["ctx"]["tenant"], "acme");
    let left = result["ctx"]["time_left_ms"].as_u64().unwrap();
    assert!(left > 1_000 && left <= 2_000, "time left {left}");
    let params = json!({"a": [1, 2]});
    let response = client
        .request(&json!({"id": 2, "service": "old", "action": "params", "params": params}))
        .await;
    assert_eq!(expect_success(&response), &params);

    // Status says which world each was built for; the current echo is the
    // new one.
    let status = ferry.status().await;
    let world = |name: &str| {
        ferry_tests::service_status(&status, name)["world"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(world("old"), "service");
    assert_eq!(world("echo"), "plugin");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_against_wit_0_1_1_loads_answers_and_reports_health() {
    let ferry = Ferry::options().start_with(|deploy| {
        std::fs::copy(fixture("echo-wit-0.1.1.wasm"), deploy.join("old.wasm")).unwrap();
    });
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({
            "id": "c-2", "service": "old", "action": "echo",
            "params": {"n": 1}, "tenant_id": "acme"
        }))
        .await;
    let result = expect_success(&response);
    assert_eq!(result["params"], json!({"n": 1}));
    assert_eq!(result["ctx"]["request_id"], "\"c-2\"");
    assert_eq!(result["ctx"]["tenant"], "acme");
    let response = client
        .request(
            &json!({"id": 3, "service": "old", "action": "sum", "params": {"numbers": [2, 3]}}),
        )
        .await;
    assert_eq!(expect_success(&response), &json!({"sum": 5}));
    // It predates `publish`: the action is unknown, not a load failure.
    let response = client
        .request(&json!({"id": 4, "service": "old", "action": "publish", "params": {}}))
        .await;
    ferry_tests::expect_error(&response, "not_found");
    let status = ferry.status().await;
    let old = ferry_tests::service_status(&status, "old");
    assert_eq!(old["world"], "plugin");
    assert_eq!(old["health"]["exported"], true, "{old}");
    assert_eq!(old["events"]["handler"], false, "{old}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_built_against_wit_0_1_2_reads_its_lent_call_beside_a_current_one() {
    let ferry = Ferry::options()
        .plugin("echo", "echo", None)
        .start_with(|deploy| {
            std::fs::copy(fixture("echo-wit-0.1.2.wasm"), deploy.join("old.wasm")).unwrap();
        });
    let mut client = ferry.connect().await;
    // Each reads the context its own way: the old one from the call it is
    // lent, the current one through `invocation.current`. Interleaved, so
    // that each reads its own request and nothing of the one before.
    for (n, service) in ["old", "echo", "old", "echo"].into_iter().enumerate() {
        let id = format!("c-{n}");
        let tenant = format!("t-{n}");
        let response = client
            .request(&json!({
                "id": id, "service": service, "action": "echo",
                "params": {"n": n}, "tenant_id": tenant, "timeout_ms": 2000
            }))
            .await;
        let result = expect_success(&response);
        assert_eq!(result["params"], json!({"n": n}), "{service}");
        assert_eq!(
            result["ctx"]["request_id"],
            format!("\"{id}\""),
            "{service}"
        );
        assert_eq!(result["ctx"]["service"], service);
        assert_eq!(result["ctx"]["tenant"], tenant.as_str(), "{service}");
        let left = result["ctx"]["time_left_ms"].as_u64().unwrap();
        assert!(left > 1_000 && left <= 2_000, "{service}: time left {left}");
        let response = client
            .request(&json!({"id": 9, "service": service, "action": "context", "params": {}}))
            .await;
        let seen = expect_success(&response);
        assert_eq!(
            seen["trace_id"].as_str().map(str::len),
            Some(32),
            "{service}: {seen}"
        );
    }
    let status = ferry.status().await;
    let old = ferry_tests::service_status(&status, "old");
    assert_eq!(old["world"], "plugin");
    assert_eq!(old["health"]["exported"], true, "{old}");
    assert_eq!(old["events"]["handler"], true, "{old}");
}

#[test]
fn ferry_check_accepts_the_old_plugin_and_names_its_world() {
    let out = std::process::Command::new(ferry_bin())
        .arg("check")
        .arg(fixture("echo-wit-0.1.0.wasm"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("world ferry:plugin/service"), "{stdout}");
}
