//! Database benchmark: `todo.get` through Ferry (socket → router → the
//! `todo` plugin → the `sql` interface → the host's sqlx pool) against a
//! native Rust server running the same query on the same kind of sqlx pool
//! (`native-todo`), in one run, on each engine: SQLite, PostgreSQL and
//! MariaDB. Servers are held to CPU 0, the load generator to CPU 1; the
//! database servers run where the kernel puts them, the same for both.
//!
//! `make bench`. `BENCH_SECS` (default 5) and `BENCH_ROUNDS` (default 3) as
//! in the socket benchmark; `BENCH_ENGINES` (default `sqlite,postgres,mariadb`)
//! picks the engines.

use std::process::{Command, Stdio};
use std::sync::Arc;

use ferry_tests::load::{
    Case, Shape, WARMUP, fail_on_errors, frame, print_ratio, print_table, wait_for_socket,
};
use ferry_tests::services::{mariadb_url, postgres_url};
use ferry_tests::{Ferry, env_u64, expect_success, pin_to_cpu, run_on_cpu, scratch_dir};
use serde_json::json;

fn shape(item: &str, tenant: &str) -> Shape {
    let (item, tenant) = (item.to_owned(), tenant.to_owned());
    Shape {
        connections: 16,
        depth: 4,
        frame: Arc::new(move |id| {
            frame(&format!(
                r#"{{"id":{id},"service":"todo","action":"get","params":{{"id":"{item}"}},"tenant_id":"{tenant}"}}"#
            ))
        }),
    }
}

fn main() {
    let seconds = env_u64("BENCH_SECS", 5);
    let rounds = env_u64("BENCH_ROUNDS", 3);
    let engines = std::env::var("BENCH_ENGINES").unwrap_or("sqlite,postgres,mariadb".into());
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("this benchmark needs two CPUs: one for the server, one for the load");
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = scratch_dir();
    println!(
        "todo.get: 16 connections x 4 in flight; {rounds} rounds of {seconds} s per server, \
         interleaved, each after {WARMUP:?} of warm-up; Ferry and native on CPU 0, load on CPU 1; \
         a pool of 10 connections on both sides\n"
    );

    // Database servers are started (if they are down) before this process
    // is pinned, so they do not inherit the load generator's CPU.
    let engines: Vec<(&str, String)> = engines
        .split(',')
        .map(|engine| {
            let url = match engine {
                "sqlite" => format!("sqlite:{}", dir.join("todo.sqlite").display()),
                "postgres" => postgres_url().expect("PostgreSQL for the benchmark"),
                "mariadb" => mariadb_url().expect("MariaDB for the benchmark"),
                other => panic!("unknown engine `{other}` in BENCH_ENGINES"),
            };
            (engine, url)
        })
        .collect();
    pin_to_cpu(1).expect("pin the load generator to CPU 1");

    let mut all = Vec::new();
    for (engine, url) in engines {
        let ferry = Ferry::options()
            .plugin("todo", "todo", Some("permissions: {database: true}\n"))
            .config(&format!(
                "apps:\n  bench:\n    services: [todo]\n    auth: none\n    database:\n      url: {url}\n"
            ))
            .cpu0()
            .start();
        // The item both servers read; creating it also creates the table.
        let tenant = format!("bench-{}", std::process::id());
        let created = runtime.block_on(async {
            let mut client = ferry.connect().await;
            client
                .request(&json!({"id": 0, "service": "todo", "action": "create", "tenant_id": tenant, "params": {"title": "benchmark item"}}))
                .await
        });
        let item = expect_success(&created)["id"].as_str().unwrap().to_owned();
        let shape = shape(&item, &tenant);

        let socket = dir.join(format!("native-{engine}.sock"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_native-todo"));
        command.arg(&socket).arg(&url).stdout(Stdio::null());
        let mut native = run_on_cpu(&mut command, 0)
            .spawn()
            .expect("spawn native-todo");
        wait_for_socket(&socket);

        let mut cases = vec![
            Case::new(format!("{engine}: native Rust + sqlx"), socket),
            Case::new(
                format!("{engine}: ferry + todo plugin"),
                ferry.socket.clone(),
            ),
        ];
        for round in 0..rounds {
            for case in &mut cases {
                case.round(&runtime, &shape, seconds, round);
            }
        }
        let _ = native.kill();
        let _ = native.wait();
        drop(ferry);
        all.push(cases);
    }

    for cases in &mut all {
        print_table(cases);
    }
    for cases in &all {
        print_ratio(&cases[1], &cases[0]);
    }
    let _ = std::fs::remove_dir_all(dir);
    let all: Vec<Case> = all.into_iter().flatten().collect();
    fail_on_errors(&all);
}
