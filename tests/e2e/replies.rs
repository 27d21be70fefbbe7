//! Asynchronous requests and batches, end to end: a request with
//! `reply_to` is answered `accepted` at once and its response envelope
//! arrives later at a hook the test listens on (a Unix socket, read as
//! 4-byte framed JSON from the protocol description; an HTTP listener
//! receiving a POST), retried while the hook is down, answered `timeout`
//! when it outlives its deadline, refused outside the allow-list, and all
//! delivered on SIGTERM. A batch runs its named requests at once. In
//! cluster mode (two hosts, a real NATS server with JetStream), an answer
//! owed to an HTTP hook outlives the process that accepted the request: a
//! loopback hook's is delivered by that host once it is back, never by
//! the other.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::receiver::Receiver;
use ferry_tests::services::OwnNats;
use ferry_tests::{Ferry, eventually, expect_error};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// A host whose one application lets requests reply to sockets in `hooks`
/// and to HTTP on loopback.
fn host(hooks: &Path) -> Ferry {
    Ferry::options()
        .plugin("echo", "echo", None)
        .config(&format!(
            "apps:\n  main:\n    hosts: [127.0.0.1]\n    services: [echo]\n    auth: none\n    reply_hooks: [\"unix:{}/*\", \"http://127.0.0.1:*/hooks/*\"]\n",
            hooks.display()
        ))
        .start()
}

fn hooks_dir() -> PathBuf {
    let dir = ferry_tests::scratch_dir();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads every framed envelope sent to `path` (one or more per
/// connection) into a channel.
fn listen(path: &Path) -> mpsc::UnboundedReceiver<Value> {
    let listener = UnixListener::bind(path).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 4];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut body = vec![0; u32::from_be_bytes(len) as usize];
                    stream.read_exact(&mut body).await.unwrap();
                    let _ = tx.send(serde_json::from_slice(&body).unwrap());
                }
            });
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no answer reached the hook")
        .expect("the hook listener ended")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_request_is_answered_later_at_a_socket_hook_and_an_http_hook() {
    let dir = hooks_dir();
    let ferry = host(&dir);
    let socket_hook = dir.join("a.sock");
    let mut answers = listen(&socket_hook);
    let mut client = ferry.connect().await;
    let started = Instant::now();
    let reply = client
        .request(
            &json!({"id": "r-1", "service": "echo", "action": "spin", "params": {"ms": 300},
            "reply_to": format!("unix:{}", socket_hook.display())}),
        )
        .await;
    assert_eq!(reply, json!({"id": "r-1", "status": "accepted"}));
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "accepted at once"
    );
    let answer = next(&mut answers).await;
    assert_eq!(
        answer,
        json!({"id": "r-1", "status": "success", "result": {"spun_ms": 300}})
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // An HTTP hook: a real listener, receiving a POST of the same JSON.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = {
        let received = received.clone();
        axum::Router::new().route(
            "/hooks/{name}",
            axum::routing::post(move |body: String| async move {
                received
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "ok"
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let reply = client
        .request(
            &json!({"id": 2, "service": "echo", "action": "params", "params": {"via": "http"},
            "reply_to": format!("http://127.0.0.1:{port}/hooks/x")}),
        )
        .await;
    assert_eq!(reply["status"], "accepted");
    eventually("the HTTP hook got the answer", WAIT, async || {
        received.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(
        received.lock().unwrap()[0],
        json!({"id": 2, "status": "success", "result": {"via": "http"}})
    );

    // The same over HTTP's `/v1/rpc`: 202, then the hook.
    let reply = ferry
        .http(
            "POST",
            "/v1/rpc",
            &[],
            json!({"id": 3, "service": "echo", "action": "params", "params": 3,
                "reply_to": format!("unix:{}", socket_hook.display())})
            .to_string()
            .as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(next(&mut answers).await["result"], 3);
    let status = ferry.status().await;
    assert_eq!(status["async_requests"]["accepted"], 3, "{status}");
    eventually("all delivered", WAIT, async || {
        let s = ferry.status().await;
        (s["async_requests"]["delivered"] == 3 && s["async_requests"]["tracked"] == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_that_is_down_is_retried_a_late_request_delivers_timeout_and_a_foreign_hook_is_forbidden()
 {
    let dir = hooks_dir();
    let ferry = host(&dir);
    let mut client = ferry.connect().await;
    let late_hook = dir.join("late.sock");
    let reply = client
        .request(
            &json!({"id": 1, "service": "echo", "action": "params", "params": "x",
            "reply_to": format!("unix:{}", late_hook.display())}),
        )
        .await;
    assert_eq!(reply["status"], "accepted");
    // Nobody listens for the first attempts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answers = listen(&late_hook);
    assert_eq!(next(&mut answers).await["result"], "x");
    let status = ferry.status().await;
    assert!(
        status["async_requests"]["retried"].as_u64().unwrap() >= 1,
        "{status}"
    );

    // Past its deadline: the hook gets a `timeout` error envelope.
    let started = Instant::now();
    let reply = client
        .request(
            &json!({"id": 2, "service": "echo", "action": "spin", "params": {"ms": 3000},
            "timeout_ms": 200, "reply_to": format!("unix:{}", late_hook.display())}),
        )
        .await;
    assert_eq!(reply["status"], "accepted");
    let answer = next(&mut answers).await;
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["error"]["code"], "timeout", "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1_500));
    eventually("timed_out counted", WAIT, async || {
        (ferry.status().await["async_requests"]["timed_out"] == 1).then_some(())
    })
    .await;

    // Outside the allow-list, and not a hook at all: refused at once.
    let before = ferry.plugin_requests("echo").await;
    for (hook, code) in [
        ("unix:/tmp/elsewhere.sock", "forbidden"),
        ("http://10.0.0.1:80/hooks/x", "forbidden"),
        ("ftp://x/", "bad_request"),
    ] {
        let reply = client
            .request(&json!({"id": 3, "service": "echo", "action": "params", "reply_to": hook}))
            .await;
        expect_error(&reply, code);
    }
    assert_eq!(ferry.plugin_requests("echo").await, before);

    // Without `reply_hooks`, every hook is forbidden.
    let open = Ferry::options().plugin("echo", "echo", None).start();
    let reply = open
        .connect()
        .await
        .request(&json!({"id": 4, "service": "echo", "action": "params",
            "reply_to": format!("unix:{}", late_hook.display())}))
        .await;
    expect_error(&reply, "forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_delivers_every_accepted_request() {
    let dir = hooks_dir();
    let mut ferry = host(&dir);
    let hook = dir.join("drain.sock");
    let mut answers = listen(&hook);
    let mut client = ferry.connect().await;
    for i in 0..100 {
        let reply = client
            .request(
                &json!({"id": i, "service": "echo", "action": "spin", "params": {"ms": 200},
                "reply_to": format!("unix:{}", hook.display())}),
            )
            .await;
        assert_eq!(reply["status"], "accepted", "{reply}");
    }
    let status = ferry.terminate();
    assert!(status.success(), "{status}");
    let mut ids = Vec::new();
    for _ in 0..100 {
        let answer = next(&mut answers).await;
        assert_eq!(answer["status"], "success", "{answer}");
        ids.push(answer["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..100).collect::<Vec<u64>>());
    let log = ferry.log();
    let line = log
        .lines()
        .find(|l| l.contains("asynchronous requests over the host's life"))
        .expect("the summary line");
    assert!(
        line.contains("accepted=100") && line.contains("delivered=100"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_runs_its_requests_at_once_and_answers_each_by_name() {
    let ferry = Ferry::options().plugin("echo", "echo", None).start();
    let mut client = ferry.connect().await;
    // Warm instances first, so the timing below is about running at once.
    let spins: serde_json::Map<String, Value> = (0..10)
        .map(|i| {
            (
                format!("s{i}"),
                json!({"service": "echo", "action": "spin", "params": {"ms": 100}}),
            )
        })
        .collect();
    client.request(&json!({"id": 0, "batch": spins})).await;
    let started = Instant::now();
    let reply = client.request(&json!({"id": "b", "batch": spins})).await;
    let took = started.elapsed();
    assert_eq!(reply["id"], "b");
    assert_eq!(reply["status"], "success");
    let batch = reply["batch"].as_object().unwrap();
    assert_eq!(batch.len(), 10);
    assert!(
        batch.values().all(|r| r["result"]["spun_ms"] == 100),
        "{reply}"
    );
    assert!(
        took < Duration::from_millis(600),
        "ten 100 ms requests took {took:?}"
    );

    let reply = client
        .request(&json!({"id": 1, "timeout_ms": 150, "batch": {
            "one": {"service": "echo", "action": "params", "params": {"n": 1}},
            "missing": {"service": "echo", "action": "nope"},
            "slow": {"service": "echo", "action": "spin", "params": {"ms": 2000}},
        }}))
        .await;
    let batch = &reply["batch"];
    assert_eq!(
        batch["one"],
        json!({"status": "success", "result": {"n": 1}})
    );
    assert_eq!(batch["missing"]["error"]["code"], "not_found");
    assert_eq!(batch["slow"]["error"]["code"], "timeout", "{reply}");

    let reply = ferry
        .http(
            "POST",
            "/v1/batch",
            &[],
            json!({"batch": {"a": {"service": "echo", "action": "params", "params": [1]}}})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["batch"]["a"]["result"], json!([1]));
    let too_many: serde_json::Map<String, Value> = (0..101)
        .map(|i| {
            (
                format!("r{i}"),
                json!({"service": "echo", "action": "params"}),
            )
        })
        .collect();
    let reply = client.request(&json!({"id": 9, "batch": too_many})).await;
    expect_error(&reply, "too_large");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_cluster_an_answer_outlives_the_host_process_that_accepted_its_request() {
    let nats = OwnNats::with_jetstream();
    let start = |options: ferry_tests::Options, name: &str| {
        options
            .plugin("echo", "echo", None)
            .config(&format!(
                "cluster: {{nats: \"{}\", name: {name}}}\napps:\n  main:\n    hosts: [127.0.0.1]\n    services: [echo]\n    auth: none\n    reply_hooks: [\"http://127.0.0.1:*/hooks/*\"]\n",
                nats.url()
            ))
            .start()
    };
    let ready = async |host: &Ferry| {
        eventually("the answers' stream is there", WAIT, async || {
            (host.status().await["cluster"]["replies"]["ready"] == true).then_some(())
        })
        .await
    };
    let (a, b) = (
        start(Ferry::options(), "host-a"),
        start(Ferry::options(), "host-b"),
    );
    ready(&a).await;
    ready(&b).await;
    // Three failed attempts (then waits of 0.1, 0.4 and 1.6 s), then 200.
    let receiver = Receiver::start().await;
    receiver.script("/hooks/x", &[(500, None), (500, None), (500, None)]);
    let mut client = a.connect().await;
    let reply = client
        .request(
            &json!({"id": "late-1", "service": "echo", "action": "params",
            "params": {"n": 1}, "reply_to": receiver.url("/hooks/x")}),
        )
        .await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    eventually("three attempts failed", WAIT, async || {
        (receiver.count("/hooks/x") >= 3).then_some(())
    })
    .await;
    assert_eq!(a.status().await["async_requests"]["to_cluster"], 1);
    // The hook is on loopback, beside host-a: B, elsewhere as far as it
    // knows, never posts it.
    assert_eq!(b.status().await["async_requests"]["retried"], 0);
    // Time for the third attempt's negative acknowledgement to reach the
    // server; then host-a dies and starts again from its folder.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = a.kill_keeping_dir();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.count("/hooks/x"),
        3,
        "posted while host-a was down"
    );
    let a = start(Ferry::options_in(dir), "host-a");
    let got = eventually(
        "host-a delivers the answer",
        Duration::from_secs(20),
        async || {
            let got = receiver.received("/hooks/x");
            (got.len() >= 4).then_some(got)
        },
    )
    .await;
    for r in &got {
        assert_eq!(
            r.json(),
            json!({"id": "late-1", "status": "success", "result": {"n": 1}})
        );
    }
    assert_eq!(got[3].status, 200);
    eventually("host-a counts it delivered", WAIT, async || {
        (a.status().await["async_requests"]["delivered"] == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.count("/hooks/x"),
        4,
        "an answer was delivered twice"
    );
    let on_b = b.status().await["async_requests"].clone();
    assert_eq!(
        (&on_b["delivered"], &on_b["retried"]),
        (&json!(0), &json!(0)),
        "{on_b}"
    );
}
