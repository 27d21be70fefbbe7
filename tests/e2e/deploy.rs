//! Deployment by file operations alone: services appear, change and go as
//! files do; a swap under load loses nothing; a bad file leaves the working
//! version serving and says why; `ferry deploy` and `ferry undeploy`; and
//! how long a rename takes to reach the first request.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::{
    Client, Ferry, eventually, expect_error, ferry_bin, plugin_bytes, service_status,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn call(action: &str) -> Value {
    json!({"id": 1, "service": "echo", "action": action})
}

/// The version `echo` answers with now, or the error code.
async fn echo_version(client: &mut Client) -> String {
    let response = client.request(&call("version")).await;
    match response["status"].as_str() {
        Some("success") => response["result"]["version"].as_str().unwrap().to_owned(),
        _ => response["error"]["code"].as_str().unwrap().to_owned(),
    }
}

async fn wait_for_version(ferry: &Ferry, want: &str) {
    let mut client = ferry.connect().await;
    eventually(&format!("echo answers version {want}"), WAIT, async || {
        (echo_version(&mut client).await == want).then_some(())
    })
    .await;
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the `ferry` command line.
fn cli(args: &[&str]) -> std::process::Output {
    Command::new(ferry_bin()).args(args).output().unwrap()
}

/// `ferry deploy FILE --name echo` against the host configured by `config`.
fn deploy_as_echo(file: &std::path::Path, config: &str) -> std::process::Output {
    cli(&[
        "deploy",
        file.to_str().unwrap(),
        "--name",
        "echo",
        "--config",
        config,
    ])
}

/// `bytes` with a custom section appended: the same code under a digest the
/// compile cache has never seen.
fn with_custom_section(bytes: &[u8], name: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn files_alone_deploy_replace_and_remove_services() {
    let ferry = Ferry::options().start();
    let mut client = ferry.connect().await;
    expect_error(&client.request(&call("version")).await, "not_found");

    // Names that are not plain service names are never loaded: placed
    // before a good file, they would be served by the time it is.
    let echo = plugin_bytes("echo");
    for odd in [
        ".echo.wasm",
        "echo.wasm.tmp",
        "Echo.wasm",
        "echo.wasm~",
        "x y.wasm",
    ] {
        ferry.place(odd, &echo);
    }

    // A new file is a new service, with its own socket.
    ferry.place("echo.wasm", &echo);
    wait_for_version(&ferry, "1").await;
    assert!(ferry.service_socket("echo").exists());
    let names: Vec<Value> = ferry.status().await["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("echo")]);

    // A new file over it is a new version.
    ferry.place("echo.wasm", &plugin_bytes("echo-v2"));
    wait_for_version(&ferry, "2").await;

    // A manifest beside it is read with it.
    ferry.place("echo.yaml", b"config: {greeting: hello, retries: 3}\n");
    eventually("echo reads its config", WAIT, async || {
        let response = client.request(&call("config")).await;
        (response["result"] == json!({"greeting": "hello", "retries": "3"})).then_some(())
    })
    .await;

    // Removing the file removes the service and its socket.
    std::fs::remove_file(ferry.deploy_dir().join("echo.wasm")).unwrap();
    eventually("echo is gone", WAIT, async || {
        (echo_version(&mut client).await == "not_found").then_some(())
    })
    .await;
    assert!(!ferry.service_socket("echo").exists());
    let status = ferry.status().await;
    assert_eq!(status["services"], json!([]), "{status}");
    assert!(
        ferry
            .log_with("service undeployed")
            .await
            .contains("service undeployed")
    );

    // And it can come back under the same name, socket and all.
    ferry.place("echo.wasm", &echo);
    wait_for_version(&ferry, "1").await;
    let mut own = Client::connect(&ferry.service_socket("echo")).await;
    assert_eq!(
        own.request(&call("version")).await["result"]["version"],
        "1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_slowly_is_loaded_once_whole() {
    use std::io::Write;
    let ferry = Ferry::options().start();
    let echo = plugin_bytes("echo");
    // Written in place, a piece at a time, the way a slow copy would.
    let mut file = std::fs::File::create(ferry.deploy_dir().join("echo.wasm")).unwrap();
    for chunk in echo.chunks(16 * 1024) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(file);
    wait_for_version(&ferry, "1").await;
    let log = ferry.log_with("service deployed").await;
    assert!(
        !log.contains("not loaded") && !log.contains("refused"),
        "a partial file was tried:\n{log}"
    );
    assert_eq!(log.matches("service deployed").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_host_does_not_read_its_plugins_again() {
    // Reading a plugin raises inotify events of its own (open, read,
    // close); a watcher that took them for changes read every plugin again
    // every two seconds, for ever.
    let ferry = Ferry::options().plugin("echo", "echo", None).start();
    wait_for_version(&ferry, "1").await;
    // Past the quiet time after the load, in which a change would be acted on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = ferry.bytes_read();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let read = ferry.bytes_read() - before;
    let size = plugin_bytes("echo").len() as u64;
    assert!(
        read < size / 4,
        "an idle host read {read} bytes in 5 s (echo.wasm is {size} bytes)"
    );
    assert_eq!(
        ferry
            .log_with("service deployed")
            .await
            .matches("service deployed")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_file_leaves_the_working_version_serving() {
    let ferry = Ferry::options().plugin("echo", "echo", None).start();
    let mut client = ferry.connect().await;
    assert_eq!(echo_version(&mut client).await, "1");
    let serving = service_status(&ferry.status().await, "echo")["version"].clone();

    let refusal = async |expected: &str| {
        let reason = eventually(&format!("status explains `{expected}`"), WAIT, async || {
            let echo = service_status(&ferry.status().await, "echo");
            let reason = echo["rejected"]["reason"].as_str()?.to_owned();
            reason.contains(expected).then_some(reason)
        })
        .await;
        let echo = service_status(&ferry.status().await, "echo");
        assert_eq!(echo["state"], "ready", "{echo}");
        assert_eq!(echo["version"], serving, "{echo}");
        reason
    };

    // A manifest with a key Ferry does not know: named, with its file.
    ferry.place("echo.yaml", b"timeout_ms: 100\nbogus_key: 1\n");
    let reason = refusal("unknown field `bogus_key`").await;
    assert!(reason.contains("echo.yaml"), "{reason}");
    assert_eq!(echo_version(&mut client).await, "1");
    // Back to the files that serve: the refusal is history.
    std::fs::remove_file(ferry.deploy_dir().join("echo.yaml")).unwrap();
    eventually("the refusal is cleared", WAIT, async || {
        let echo = service_status(&ferry.status().await, "echo");
        echo["rejected"].is_null().then_some(())
    })
    .await;

    // An empty component: valid WebAssembly, but not Ferry's world.
    let not_a_service = b"\0asm\x0d\0\x01\0";
    for (bytes, expected) in [
        (&b"hello"[..], "not a WebAssembly file"),
        (&b"\0asm\x01\0\0\0"[..], "core wasm module"),
        (&not_a_service[..], "ferry:plugin/handler"),
    ] {
        ferry.place("echo.wasm", bytes);
        refusal(expected).await;
        assert_eq!(echo_version(&mut client).await, "1");
    }

    // `ferry status` says the same.
    let out = Command::new(ferry_bin())
        .args(["status", "--admin", &ferry.admin.unwrap().to_string()])
        .output()
        .unwrap();
    let table = text(&out.stdout);
    assert!(
        table.contains("was refused") && table.contains("keeps serving"),
        "{table}"
    );

    // A good file replaces the refusal.
    ferry.place("echo.wasm", &plugin_bytes("echo-v2"));
    wait_for_version(&ferry, "2").await;
    let echo = service_status(&ferry.status().await, "echo");
    assert_eq!(echo["rejected"], Value::Null, "{echo}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_first_deploy_is_failed_and_readyz_says_so() {
    let ferry = Ferry::options().start();
    ferry.place("echo.wasm", b"hello");
    eventually("echo is failed", WAIT, async || {
        let status = ferry.status().await;
        let echo = status["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "echo")?
            .clone();
        (echo["state"] == "failed").then_some(())
    })
    .await;
    assert_eq!(ferry.http("GET", "/readyz", &[], b"").await.status, 503);
    ferry.place("echo.wasm", &plugin_bytes("echo"));
    wait_for_version(&ferry, "1").await;
    assert_eq!(ferry.http("GET", "/readyz", &[], b"").await.status, 200);
}

/// What the load saw.
#[derive(Default)]
struct Seen {
    answers: AtomicU64,
    version_1: AtomicU64,
    version_2: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Seen {
    fn record(&self, outcome: Result<String, String>) {
        self.answers.fetch_add(1, Ordering::Relaxed);
        match outcome.as_deref() {
            Ok("1") => self.version_1.fetch_add(1, Ordering::Relaxed),
            Ok("2") => self.version_2.fetch_add(1, Ordering::Relaxed),
            _ => {
                self.failures.lock().unwrap().push(format!("{outcome:?}"));
                0
            }
        };
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swap_under_load_answers_every_request_from_one_version_or_the_other() {
    const SWAPS: usize = 20;
    let ferry = Ferry::options().plugin("echo", "echo", None).start();
    let versions = [plugin_bytes("echo"), plugin_bytes("echo-v2")];
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (socket, seen, stop) = (ferry.socket.clone(), seen.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut client = Client::connect(&socket).await;
            while !stop.load(Ordering::Relaxed) {
                let response = client.request(&call("version")).await;
                seen.record(match response["status"].as_str() {
                    Some("success") => Ok(response["result"]["version"].as_str().unwrap().into()),
                    _ => Err(response.to_string()),
                });
            }
        }));
    }
    let addr = ferry.http.unwrap();
    for _ in 0..4 {
        let (seen, stop) = (seen.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply =
                    ferry_tests::http_request(addr, "POST", "/v1/echo/version", &[], b"").await;
                seen.record(if reply.status == 200 {
                    Ok(reply.json()["version"].as_str().unwrap().into())
                } else {
                    Err(format!("{} {}", reply.status, reply.text()))
                });
            }
        }));
    }

    let started = Instant::now();
    let mut swap_times = Vec::new();
    for swap in 0..SWAPS {
        let next = (swap + 1) % 2;
        let answered_before = seen.answers.load(Ordering::Relaxed);
        let renamed = Instant::now();
        ferry.place("echo.wasm", &versions[next]);
        wait_for_version(&ferry, &(next + 1).to_string()).await;
        swap_times.push(renamed.elapsed());
        // Let the load run on the new version for a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            seen.answers.load(Ordering::Relaxed) > answered_before,
            "no requests were answered during swap {swap}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();

    let answers = seen.answers.load(Ordering::Relaxed);
    let rate = answers as f64 / elapsed.as_secs_f64();
    let failures = seen.failures.lock().unwrap();
    swap_times.sort();
    eprintln!(
        "{SWAPS} swaps in {elapsed:?}: {answers} answers ({rate:.0}/s; version 1: {}, version 2: {}), \
         {} failures; rename to serving: median {:?}, slowest {:?}",
        seen.version_1.load(Ordering::Relaxed),
        seen.version_2.load(Ordering::Relaxed),
        failures.len(),
        swap_times[SWAPS / 2],
        swap_times[SWAPS - 1],
    );
    assert!(
        failures.is_empty(),
        "{} requests failed, first: {}",
        failures.len(),
        failures[0]
    );
    assert!(rate >= 200.0, "only {rate:.0} requests per second");
    assert!(
        seen.version_1.load(Ordering::Relaxed) > 0 && seen.version_2.load(Ordering::Relaxed) > 0
    );

    // Every old version let go once its last request was done.
    eventually("no version is left draining", WAIT, async || {
        let status = ferry.status().await;
        (status["draining"] == json!([])).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn time_from_a_rename_to_the_first_request_on_the_new_version() {
    let ferry = Ferry::options().plugin("echo", "echo", None).start();
    let mut client = ferry.connect().await;
    assert_eq!(echo_version(&mut client).await, "1");
    let fresh = with_custom_section(
        &plugin_bytes("echo-v2"),
        &format!("ferry-test-{}-{:?}", std::process::id(), Instant::now()),
    );

    let mut serve = async |bytes: &[u8], want: &str| {
        let renamed = Instant::now();
        ferry.place("echo.wasm", bytes);
        while echo_version(&mut client).await != want {
            assert!(renamed.elapsed() < WAIT, "version {want} never served");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        renamed.elapsed()
    };
    let count = |what: &str| ferry.log().matches(what).count();
    let (misses, hits) = (count("cache=miss"), count("cache=hit"));
    let cold = serve(&fresh, "2").await;
    assert_eq!(
        ferry.log_count("cache=miss", misses + 1).await,
        misses + 1,
        "the new file was compiled"
    );
    let warm_back = serve(&plugin_bytes("echo"), "1").await;
    let warm = serve(&fresh, "2").await;
    assert_eq!(
        ferry.log_count("cache=hit", hits + 2).await,
        hits + 2,
        "both swaps back came from the cache"
    );
    eprintln!(
        "rename to first request on the new version: cold compile cache {cold:?}, \
         warm {warm:?} (and {warm_back:?} back to the first version)"
    );
    assert!(
        warm < cold,
        "a cached version took {warm:?}, a new one {cold:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ferry_deploy_checks_moves_in_and_waits_and_undeploy_removes() {
    let ferry = Ferry::options().plugin("echo", "echo", None).start();
    let config = ferry.config_path();
    let config = config.to_str().unwrap();
    let staged = ferry.dir.join("echo-v2.wasm");
    std::fs::write(&staged, plugin_bytes("echo-v2")).unwrap();

    let out = deploy_as_echo(&staged, config);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(said.contains("serving after"), "{said}");
    let mut client = ferry.connect().await;
    assert_eq!(echo_version(&mut client).await, "2");
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(ferry.deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A broken file is refused before it gets near the folder.
    let broken = ferry.dir.join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x01\0\0\0").unwrap();
    let out = deploy_as_echo(&broken, config);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("core wasm module"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read(ferry.deploy_dir().join("echo.wasm")).unwrap(),
        plugin_bytes("echo-v2")
    );

    // A manifest goes in with it, and is checked first.
    let manifest = ferry.dir.join("echo-v2.yaml");
    std::fs::write(&manifest, "config: {greeting: hi}\ntimeout_ms: 0\n").unwrap();
    let out = deploy_as_echo(&staged, config);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("timeout_ms"),
        "{}",
        text(&out.stdout)
    );
    std::fs::write(&manifest, "config: {greeting: hi}\n").unwrap();
    let out = deploy_as_echo(&staged, config);
    assert!(out.status.success(), "{}", text(&out.stdout));
    eventually("echo reads the deployed manifest", WAIT, async || {
        let response = client.request(&call("config")).await;
        (response["result"] == json!({"greeting": "hi"})).then_some(())
    })
    .await;

    let out = cli(&["undeploy", "echo", "--config", config]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    expect_error(&client.request(&call("version")).await, "not_found");
    assert!(!ferry.deploy_dir().join("echo.yaml").exists());
    let out = cli(&["undeploy", "echo", "--config", config]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no service `echo`"));
}
