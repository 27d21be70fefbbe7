//! Plugins in other languages: `hello-py` (componentize-py), `hello-js`
//! (componentize-js) and `hello-c` (clang, wasi-libc and wit-bindgen's C
//! bindings) pass the same end-to-end cases as the Rust `echo`,
//! over HTTP and the socket, plus a trap, the database, and the circuit of
//! a plugin without a health export; and `ferry new` writes a skeleton in
//! each language that builds, passes its smoke test, deploys and answers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_tests::{
    Client, Ferry, eventually, expect_error, expect_success, ferry_bin, scratch_dir,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "languages-tests-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);

fn token(subject: &str, tenant: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": subject, "tenant": tenant, "aud": "secure", "exp": now + 600, "role": "tester"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// One host with the Rust `echo` and both other-language plugins, in an
/// open application (the default on the socket and for `127.0.0.1`) and one
/// behind JWT.
fn start() -> Ferry {
    let services = "[echo, hello-py, hello-js, hello-c]";
    let grant = "permissions: {database: true}\n";
    Ferry::options()
        .plugin("echo", "echo", None)
        .plugin("hello-py", "hello-py", Some(grant))
        .plugin(
            "hello-js",
            "hello-js",
            Some(&format!("{grant}circuit: {{failures: 3, backoff_ms: 300}}\n")),
        )
        .plugin("hello-c", "hello-c", Some(grant))
        .env("FERRY_TEST_SECRET", SECRET)
        .socket("{path: run/ferry.sock, app: open}")
        .config(&format!(
            "apps:\n  open:\n    hosts: [127.0.0.1]\n    services: {services}\n    auth: none\n  secure:\n    hosts: [secure.localhost]\n    services: {services}\n    auth:\n      jwt:\n        algorithms: [HS256]\n        secret_env: FERRY_TEST_SECRET\n        tenant_claim: tenant\n"
        ))
        .start()
}

/// The cases every echo passes, whatever language it is written in.
async fn echo_cases(ferry: &Ferry, service: &str) {
    let params = json!({"hello": "wörld ☃", "n": [1, 2.5, null, true], "nested": {"a": {}}});

    // The main socket.
    let mut client = ferry.connect().await;
    let response = client
        .request(&json!({"id": "req-1", "service": service, "action": "echo", "params": params, "tenant_id": "acme", "timeout_ms": 2000}))
        .await;
    assert_eq!(response["id"], "req-1", "{service}");
    let result = expect_success(&response);
    assert_eq!(result["params"], params, "{service}");
    let ctx = &result["ctx"];
    assert_eq!(ctx["service"], service);
    assert_eq!(ctx["app"], "open");
    assert_eq!(ctx["tenant"], "acme");
    assert_eq!(ctx["subject"], Value::Null);
    assert_eq!(ctx["request_id"], "\"req-1\"");
    assert_eq!(ctx["claims"], json!({}));
    let left = ctx["time_left_ms"].as_u64().unwrap();
    assert!(left > 1000 && left <= 2000, "{service}: {left} ms left");

    // The service's own socket, with ids of both kinds.
    let mut own = Client::connect(&ferry.service_socket(service)).await;
    let response = own
        .request(&json!({"id": 7, "action": "echo", "params": [1, 2, 3]}))
        .await;
    assert_eq!(response["id"], 7);
    assert_eq!(
        expect_success(&response)["params"],
        json!([1, 2, 3]),
        "{service}"
    );

    // Many at once on one connection, each matched to its request.
    for i in 0..100u64 {
        client
            .send(&json!({"id": i, "service": service, "action": "echo", "params": {"i": i}}))
            .await;
    }
    for _ in 0..100 {
        let response = client.recv().await.unwrap();
        assert_eq!(
            expect_success(&response)["params"]["i"],
            response["id"],
            "{service}"
        );
    }

    // HTTP: the body is the params; empty means `{}`.
    let path = format!("/v1/{service}/echo");
    let reply = ferry
        .http(
            "POST",
            &path,
            &[("x-tenant-id", "acme"), ("x-request-id", "h-1")],
            params.to_string().as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200, "{service}: {}", reply.text());
    let result = reply.json();
    assert_eq!(result["params"], params, "{service}");
    assert_eq!(result["ctx"]["request_id"], "\"h-1\"");
    let reply = ferry.http("POST", &path, &[], b"").await;
    assert_eq!(reply.json()["params"], json!({}), "{service}");
    let reply = ferry
        .http(
            "POST",
            "/v1/rpc",
            &[],
            json!({"id": 9, "service": service, "action": "echo", "params": [true]})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(expect_success(&reply.json())["params"], json!([true]));

    // A verified token: subject, tenant and claims reach the plugin.
    let auth = format!("Bearer {}", token("ada", "globex"));
    let reply = ferry
        .http(
            "POST",
            &path,
            &[("Host", "secure.localhost"), ("Authorization", &auth)],
            b"{}",
        )
        .await;
    assert_eq!(reply.status, 200, "{service}: {}", reply.text());
    let ctx = &reply.json()["ctx"];
    assert_eq!(
        (&ctx["subject"], &ctx["tenant"]),
        (&json!("ada"), &json!("globex"))
    );
    assert_eq!(ctx["claims"]["role"], "tester", "{service}");
    assert_eq!(ctx["app"], "secure");
    let reply = ferry
        .http("POST", &path, &[("Host", "secure.localhost")], b"{}")
        .await;
    assert_eq!(reply.status, 401, "{service}: a token is required there");

    // An action it does not have.
    let response = client
        .request(&json!({"id": 1, "service": service, "action": "nope"}))
        .await;
    assert!(
        expect_error(&response, "not_found").contains("no action `nope`"),
        "{service}: {response}"
    );
    let reply = ferry
        .http("POST", &format!("/v1/{service}/nope"), &[], b"")
        .await;
    assert_eq!(reply.status, 404);
}

/// What the Python, JavaScript and C plugins do beyond echo.
async fn hello_cases(ferry: &Ferry, service: &str) {
    let mut client = ferry.connect().await;
    let call = |action: &str, params: Value| json!({"id": 1, "service": service, "action": action, "params": params, "tenant_id": format!("t-{service}")});

    // The caller, as the plugin reads it from the context.
    let response = client
        .request(&json!({"id": 1, "app": "secure", "service": service, "action": "whoami", "token": token("grace", "initech")}))
        .await;
    assert_eq!(
        expect_success(&response),
        &json!({"subject": "grace", "tenant": "initech"}),
        "{service}"
    );

    // The database, bound parameters, one count per tenant.
    for n in 1..=2 {
        let response = client.request(&call("visit", json!({}))).await;
        assert_eq!(expect_success(&response)["visits"], n, "{service}");
    }
    let other = client
        .request(&json!({"id": 1, "service": service, "action": "visit", "tenant_id": format!("other-{service}")}))
        .await;
    assert_eq!(expect_success(&other)["visits"], 1, "{service}");
    let nobody = client
        .request(&json!({"id": 1, "service": service, "action": "visit"}))
        .await;
    expect_error(&nobody, "forbidden");

    // An exception that escapes the handler traps; the next request works.
    let response = client.request(&call("boom", json!({}))).await;
    let message = expect_error(&response, "plugin_trap");
    assert!(message.contains("boom requested"), "{service}: {message}");
    let response = client
        .request(&call("echo", json!({"after": "boom"})))
        .await;
    assert_eq!(
        expect_success(&response)["params"],
        json!({"after": "boom"})
    );

    // Params that are not JSON never reach the handler's actions.
    let reply = ferry
        .http("POST", &format!("/v1/{service}/echo"), &[], b"{broken")
        .await;
    assert_eq!(reply.status, 400, "{service}");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_javascript_and_c_plugins_pass_the_echo_cases_and_more() {
    let ferry = start();
    for service in ["echo", "hello-py", "hello-js", "hello-c"] {
        echo_cases(&ferry, service).await;
    }
    for service in ["hello-py", "hello-js", "hello-c"] {
        hello_cases(&ferry, service).await;
    }

    // Without a health export the probe after the back-off is a request.
    let mut client = ferry.connect().await;
    // (Three failures open it; one boom above already counts.)
    let boom = json!({"id": 1, "service": "hello-js", "action": "boom"});
    for _ in 0..2 {
        expect_error(&client.request(&boom).await, "plugin_trap");
    }
    let echo = json!({"id": 2, "service": "hello-js", "action": "echo", "params": 1});
    expect_error(&client.request(&echo).await, "unavailable");
    let response = eventually("the circuit lets a probe through", WAIT, async || {
        let response = client.request(&echo).await;
        (response["status"] == "success").then_some(response)
    })
    .await;
    assert_eq!(response["result"]["params"], 1);
    let status = ferry.status().await;
    let js = ferry_tests::service_status(&status, "hello-js");
    assert_eq!(js["circuit"]["state"], "closed", "{js}");
    assert_eq!(js["health"]["exported"], false);

    // A result that is not JSON (here shaped to end the envelope's object
    // early and add fields) is refused, on both doors, and the plugin keeps
    // serving.
    let forge = json!({"id": "f-1", "service": "hello-c", "action": "forge"});
    let response = client.request(&forge).await;
    assert_eq!(response["id"], "f-1", "{response}");
    let message = expect_error(&response, "internal");
    assert!(message.contains("not valid JSON"), "{message}");
    assert!(response.get("forged").is_none(), "{response}");
    let reply = ferry.http("POST", "/v1/hello-c/forge", &[], b"{}").await;
    assert_eq!(reply.status, 500, "{}", reply.text());
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], "internal", "{body}");
    assert!(body.get("forged").is_none(), "{body}");
    let echo = json!({"id": 3, "service": "hello-c", "action": "echo", "params": [1]});
    assert_eq!(
        expect_success(&client.request(&echo).await)["params"],
        json!([1])
    );
}

/// Where skeletons build their Rust code: beside, not inside, the target
/// folder `cargo test` holds.
fn scaffold_target() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().join("scaffold")
}

fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{said}");
    said
}

/// `ferry new`, then the one documented build command, then the smoke
/// test; answers the built component.
fn new_plugin(dir: &Path, name: &str, lang: &str) -> PathBuf {
    let folder = dir.join(name);
    run(
        Command::new(ferry_bin()).args([
            "new",
            name,
            "--lang",
            lang,
            "--dir",
            folder.to_str().unwrap(),
        ]),
        "ferry new",
    );
    let readme = std::fs::read_to_string(folder.join("README.md")).unwrap();
    assert!(readme.contains("./build.sh"), "{readme}");
    run(
        Command::new(folder.join("build.sh")).env("CARGO_TARGET_DIR", scaffold_target()),
        &format!("./build.sh of the {lang} skeleton"),
    );
    let wasm = folder.join(format!("{name}.wasm"));
    let said = run(
        Command::new(ferry_bin())
            .arg("check")
            .arg(&wasm)
            .arg("--smoke")
            .arg(folder.join("smoke.json")),
        "the smoke test",
    );
    assert!(said.contains("smoke test: 3 passed, 0 failed"), "{said}");
    wasm
}

#[tokio::test(flavor = "multi_thread")]
async fn ferry_new_writes_skeletons_that_build_pass_their_smoke_test_and_answer() {
    let dir = scratch_dir();
    let ferry = Ferry::options().start();
    let mut client = ferry.connect().await;
    for lang in ["rust", "python", "js", "c"] {
        let name = format!("greet-{lang}");
        let wasm = tokio::task::block_in_place(|| new_plugin(&dir, &name, lang));
        ferry.place(&format!("{name}.wasm"), &std::fs::read(&wasm).unwrap());
        let hello = json!({"id": 1, "service": name, "action": "hello", "params": {"name": "Ada"}, "tenant_id": "acme"});
        let response = eventually(&format!("{name} answers"), WAIT, async || {
            let response = client.request(&hello).await;
            (response["status"] == "success").then_some(response)
        })
        .await;
        assert_eq!(
            response["result"],
            json!({"message": "hello, Ada", "tenant": "acme"}),
            "{lang}"
        );
        let reply = ferry
            .http(
                "POST",
                &format!("/v1/{name}/hello"),
                &[],
                br#"{"name": ""}"#,
            )
            .await;
        assert_eq!(reply.status, 400, "{lang}: {}", reply.text());
    }

    // A smoke case that does not hold fails the check, saying why.
    let cases = dir.join("wrong.json");
    std::fs::write(
        &cases,
        r#"[{"action": "hello", "params": {"name": "Ada"}, "expect": {"message": "hi"}}]"#,
    )
    .unwrap();
    let out = Command::new(ferry_bin())
        .arg("check")
        .arg(dir.join("greet-js/greet-js.wasm"))
        .arg("--smoke")
        .arg(&cases)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("FAIL  hello: expected {\"message\":\"hi\"}"),
        "{said}"
    );

    // A folder in use is left alone.
    let out = Command::new(ferry_bin())
        .args(["new", "greet-js", "--lang", "js", "--dir"])
        .arg(dir.join("greet-js"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let _ = std::fs::remove_dir_all(dir);
}
