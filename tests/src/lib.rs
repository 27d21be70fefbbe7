//! Test harness: starts the real `ferry` binary in a scratch folder with the
//! real example plugins, and talks to it over its real sockets.

pub mod baseline;
pub mod bus;
pub mod load;
pub mod receiver;
pub mod services;
pub mod wit_reference;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Where cargo put the binaries of this build: `target/<profile>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> or target/<profile>/<bench>
    let mut dir = exe.parent().expect("exe folder").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The `ferry` binary under test: `$FERRY_BIN`, or the one built beside
/// this test.
pub fn ferry_bin() -> PathBuf {
    let path = std::env::var_os("FERRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("ferry"));
    assert!(
        path.exists(),
        "ferry binary not found at {}; run `make test`, which builds it",
        path.display()
    );
    path
}

/// A built example plugin: `$FERRY_PLUGINS/NAME.wasm`, or the wasm32-wasip2
/// `plugin`-profile build in this target folder.
pub fn plugin_wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("FERRY_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            profile_dir()
                .parent()
                .expect("target folder")
                .join("wasm32-wasip2/plugin")
        });
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "plugin {} not found; run `make test`, which builds the example plugins",
        path.display()
    );
    path
}

/// Restricts the calling thread (and what it spawns after) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, and CPU_SET stays inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `command` start on `cpu` only (for benchmarks: servers on one
/// core, load on the other).
pub fn run_on_cpu(command: &mut Command, cpu: usize) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only an async-signal-safe system call between fork and exec.
    unsafe { command.pre_exec(move || pin_to_cpu(cpu)) }
}

/// A benchmark setting from the environment, or its default.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A fresh scratch folder, short enough for Unix socket paths.
pub fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(format!(
        "/tmp/fe-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch folder");
    dir
}

/// How to start a host.
pub struct Options {
    dir: PathBuf,
    plugins: Vec<(String, String, Option<String>)>,
    config: String,
    cpu0: bool,
    env: Vec<(String, String)>,
    /// Replaces the generated `socket: run/ferry.sock` line.
    socket: Option<String>,
    /// Replaces the generated `http: 127.0.0.1:0` line.
    http: Option<String>,
    /// The host's limit on open file descriptors.
    fd_limit: Option<u64>,
    /// Another `ferry` binary to run instead of the one under test.
    binary: Option<PathBuf>,
    /// The log line that says the host has started.
    started_when: &'static str,
}

impl Options {
    /// `extra` is appended to the generated config file.
    pub fn config(mut self, extra: &str) -> Self {
        self.config.push_str(extra);
        self
    }

    /// Sets an environment variable for the host process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes `socket:` as given (YAML, after `socket:`) instead of the
    /// plain path; the path must stay `run/ferry.sock`.
    pub fn socket(mut self, yaml: &str) -> Self {
        self.socket = Some(yaml.to_owned());
        self
    }

    /// Writes `http:` as given (YAML, after `http:`) instead of the plain
    /// address; it must listen on `127.0.0.1:0` or `null`.
    pub fn http(mut self, yaml: &str) -> Self {
        self.http = Some(yaml.to_owned());
        self
    }

    /// Starts the host with at most `n` open file descriptors.
    /// Runs `path` instead of the binary under test: a previous build, to
    /// compare with in the same benchmark run. Its config gets no `admin`
    /// key, which builds from before the admin listener refuse.
    pub fn binary(mut self, path: PathBuf) -> Self {
        self.binary = Some(path);
        self
    }

    /// Counts the host as started once its doors are open, before its
    /// plugins have loaded.
    pub fn doors_open(mut self) -> Self {
        self.started_when = "listening; plugins are loading";
        self
    }

    pub fn fd_limit(mut self, n: u64) -> Self {
        self.fd_limit = Some(n);
        self
    }

    /// Writes a file into the host's folder (keys, secrets) before it starts.
    pub fn file(self, name: &str, contents: &[u8]) -> Self {
        fs::write(self.dir.join(name), contents).unwrap();
        self
    }

    /// Holds the host to CPU 0 (for benchmarks, with the load on CPU 1).
    pub fn cpu0(mut self) -> Self {
        self.cpu0 = true;
        self
    }

    /// Deploys example plugin `plugin` as service `name`, with a manifest.
    pub fn plugin(mut self, plugin: &str, name: &str, manifest: Option<&str>) -> Self {
        self.plugins.push((
            plugin.to_owned(),
            name.to_owned(),
            manifest.map(str::to_owned),
        ));
        self
    }

    pub fn start(self) -> Ferry {
        self.start_with(|_| {})
    }

    /// Starts after `prepare` has had a chance to add files to `deploy/`.
    pub fn start_with(self, prepare: impl FnOnce(&Path)) -> Ferry {
        let Options {
            dir,
            plugins,
            config,
            cpu0,
            env,
            socket,
            http,
            fd_limit,
            binary,
            started_when,
        } = self;
        let deploy = dir.join("deploy");
        fs::create_dir_all(&deploy).unwrap();
        for (plugin, name, manifest) in plugins {
            fs::copy(plugin_wasm(&plugin), deploy.join(format!("{name}.wasm"))).unwrap();
            if let Some(manifest) = manifest {
                fs::write(deploy.join(format!("{name}.yaml")), manifest).unwrap();
            }
        }
        prepare(&deploy);
        let config_path = dir.join("ferry.yaml");
        let head = format!(
            "socket: {}\nplugins: deploy\ndata: data\nhttp: {}\n{}",
            socket.as_deref().unwrap_or("run/ferry.sock"),
            http.as_deref().unwrap_or("127.0.0.1:0"),
            if binary.is_some() {
                ""
            } else {
                "admin: 127.0.0.1:0\n"
            },
        );
        fs::write(&config_path, format!("{head}{config}")).unwrap();
        let binary = binary.unwrap_or_else(ferry_bin);
        let mut ferry = Ferry::spawn(
            dir,
            &binary,
            &config_path,
            cpu0,
            fd_limit,
            &env,
            started_when,
        );
        ferry.config_head = head;
        ferry
    }
}

/// A running `ferry serve`, killed when dropped.
pub struct Ferry {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
    /// Time from spawn to "ferry is serving".
    pub startup: Duration,
    /// Where the HTTP gateway listens, if it is on.
    pub http: Option<std::net::SocketAddr>,
    /// Where the admin endpoints (`/v1/status`, `/metrics`) listen.
    pub admin: Option<std::net::SocketAddr>,
    keep: bool,
    /// The generated part of the config file (sockets, folders).
    config_head: String,
}

impl Ferry {
    /// Options for a host in a new scratch folder.
    pub fn options() -> Options {
        Self::options_in(scratch_dir())
    }

    /// Options for a host in `dir`, which may hold a previous run's data.
    pub fn options_in(dir: PathBuf) -> Options {
        Options {
            dir,
            plugins: Vec::new(),
            config: String::new(),
            cpu0: false,
            env: Vec::new(),
            socket: None,
            http: None,
            fd_limit: None,
            binary: None,
            started_when: "ferry is serving",
        }
    }

    /// For benchmarks: `echo` on the binary named by `FERRY_BASELINE` (a
    /// previous build), on CPU 0, when that is set; run in the same rounds
    /// as the build under test, it tells a regression from noise.
    pub fn baseline_echo() -> Option<Ferry> {
        let path = std::env::var_os("FERRY_BASELINE")?;
        Some(
            Ferry::options()
                .binary(path.into())
                .plugin("echo", "echo", None)
                .cpu0()
                .start(),
        )
    }

    /// A host serving `echo` and `faulty` with default settings.
    pub fn start_default() -> Ferry {
        Self::options()
            .plugin("echo", "echo", None)
            .plugin("faulty", "faulty", None)
            .start()
    }

    fn spawn(
        dir: PathBuf,
        binary: &Path,
        config: &Path,
        cpu0: bool,
        fd_limit: Option<u64>,
        env: &[(String, String)],
        started_when: &str,
    ) -> Ferry {
        // One log per run, so a restarted host in the same folder keeps both.
        let runs = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count();
        let log = dir.join(format!("ferry-{runs}.log"));
        let log_file = fs::File::create(&log).unwrap();
        let started = Instant::now();
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("FERRY_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        if cpu0 {
            run_on_cpu(&mut command, 0);
        }
        if let Some(n) = fd_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: only an async-signal-safe system call between fork
            // and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("spawn ferry");
        let mut ferry = Ferry {
            child: Some(child),
            socket: dir.join("run/ferry.sock"),
            dir,
            log,
            startup: Duration::ZERO,
            http: None,
            admin: None,
            keep: false,
            config_head: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if ferry.log().contains(started_when) {
                break;
            }
            if let Some(status) = ferry.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "ferry exited with {status} during start-up:\n{}",
                    ferry.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ferry did not start:\n{}",
                ferry.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        ferry.startup = started.elapsed();
        let log = ferry.log();
        let listening = |what: &str| {
            log.lines().find_map(|line| {
                let rest = line.split(what).nth(1)?;
                rest.split_whitespace()
                    .find_map(|field| field.strip_prefix("addr="))?
                    .parse()
                    .ok()
            })
        };
        ferry.http = listening("http gateway listening");
        ferry.admin = listening("admin endpoints listening");
        ferry
    }

    /// Sends one HTTP/1.1 request to the gateway and reads the whole reply.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpReply {
        let addr = self.http.expect("the HTTP gateway is on");
        http_request(addr, method, path, headers, body).await
    }

    /// Sends one HTTP/1.1 request to the admin listener.
    pub async fn admin_http(&self, method: &str, path: &str) -> HttpReply {
        let addr = self.admin.expect("the admin endpoints are on");
        http_request(addr, method, path, &[], b"").await
    }

    /// Requests that reached `service`'s plugin, from `/v1/status`: how a
    /// test proves a refused request never ran.
    pub async fn plugin_requests(&self, service: &str) -> u64 {
        let status = self.status().await;
        service_status(&status, service)["stats"]["requests"]
            .as_u64()
            .expect("a request count")
    }

    /// The log once it holds `what`: the host writes its log from a thread
    /// of its own, so a line can land a moment after what it reports.
    pub async fn log_with(&self, what: &str) -> String {
        self.log_count(what, 1).await;
        self.log()
    }

    /// How often `what` is in the log, once it is there at least `least`
    /// times (or after 5 s, whatever the count).
    pub async fn log_count(&self, what: &str, least: usize) -> usize {
        let started = Instant::now();
        loop {
            let count = self.log().matches(what).count();
            if count >= least || started.elapsed() > Duration::from_secs(5) {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Everything the host logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The socket of one service.
    /// The events socket, beside the main socket by default.
    pub fn events_socket(&self) -> PathBuf {
        self.dir.join("run/events.sock")
    }

    pub fn service_socket(&self, service: &str) -> PathBuf {
        self.dir.join(format!("run/services/{service}.sock"))
    }

    /// Resident memory of the host process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid())
    }

    /// File descriptors the host process has open.
    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Bytes the host process has read through system calls so far
    /// (`rchar` in `/proc/PID/io`).
    pub fn bytes_read(&self) -> u64 {
        let io = fs::read_to_string(format!("/proc/{}/io", self.pid())).unwrap();
        io.lines()
            .find_map(|line| line.strip_prefix("rchar: "))
            .expect("rchar in /proc/PID/io")
            .parse()
            .unwrap()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ferry did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the host with SIGKILL (no chance to finish anything) and keeps
    /// its folder for another start.
    pub fn kill_keeping_dir(mut self) -> PathBuf {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        self.keep = true;
        self.dir.clone()
    }

    /// Stops the host and keeps its folder (data, cache) for another start.
    pub fn stop_keeping_dir(mut self) -> PathBuf {
        self.terminate();
        self.keep = true;
        self.dir.clone()
    }

    /// A client connected to the main socket.
    pub async fn connect(&self) -> Client {
        Client::connect(&self.socket).await
    }

    /// The plugins folder the host watches.
    pub fn deploy_dir(&self) -> PathBuf {
        self.dir.join("deploy")
    }

    /// The host's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("ferry.yaml")
    }

    /// Rewrites the config file with `extra` in place of what the options
    /// added (the sockets and folders stay); the host sees it on a reload.
    pub fn rewrite_config(&self, extra: &str) {
        fs::write(self.config_path(), format!("{}{extra}", self.config_head)).unwrap();
    }

    /// Puts `bytes` into the plugins folder as `file` the safe way: written
    /// under a hidden name first, then renamed into place.
    pub fn place(&self, file: &str, bytes: &[u8]) {
        let temporary = self.deploy_dir().join(format!(".{file}.partial"));
        fs::write(&temporary, bytes).unwrap();
        fs::rename(&temporary, self.deploy_dir().join(file)).unwrap();
    }

    /// The `/v1/status` document, from the admin listener.
    pub async fn status(&self) -> Value {
        self.admin_http("GET", "/v1/status").await.json()
    }

    /// Publishes through the `echo` plugin's `publish` action, as a
    /// plugin's event; answers the event's id.
    pub async fn publish_through_echo(&self, topic: &str, payload: Value) -> String {
        let mut client = self.connect().await;
        let reply = client
            .request(
                &serde_json::json!({"id": 1, "service": "echo", "action": "publish",
                "params": {"topic": topic, "payload": payload}}),
            )
            .await;
        expect_success(&reply)["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// The bytes of a built example plugin.
/// A file of `tests/fixtures` (components built against earlier WIT).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub fn plugin_bytes(name: &str) -> Vec<u8> {
    fs::read(plugin_wasm(name)).unwrap()
}

/// Polls `probe` until it answers `Some`, failing the test after `limit`.
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            started.elapsed() < limit,
            "gave up after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- ferry log ({}) ---\n{}", self.log.display(), self.log());
        } else if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// How long a test waits for any single response before failing.
pub const RESPONSE_WAIT: Duration = Duration::from_secs(30);

/// A framed-JSON client over a Unix socket.
pub struct Client {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        let (read, write) = stream.into_split();
        Client {
            read: BufReader::new(read),
            write,
        }
    }

    /// Sends `value` as one frame.
    pub async fn send(&mut self, value: &Value) {
        let payload = serde_json::to_vec(value).unwrap();
        self.send_payload(&payload).await;
    }

    /// Sends arbitrary bytes as one well-formed frame.
    pub async fn send_payload(&mut self, payload: &[u8]) {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.send_raw(&frame).await;
    }

    /// Sends `value` as one frame; an error once the host has closed.
    pub async fn try_send(&mut self, value: &Value) -> std::io::Result<()> {
        let payload = serde_json::to_vec(value).unwrap();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        self.write.write_all(&frame).await
    }

    /// Sends bytes exactly as given; an error once the host has closed.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await
    }

    /// Sends bytes exactly as given.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.expect("write to ferry");
    }

    /// Closes the sending half; the host still owes responses.
    pub async fn shutdown_write(&mut self) {
        self.write.shutdown().await.unwrap();
    }

    /// The next response, or `None` when the host closed the connection.
    pub async fn recv(&mut self) -> Option<Value> {
        self.recv_within(RESPONSE_WAIT).await
    }

    /// The next response within `wait`: for a request whose own deadline
    /// is longer than the usual wait.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, self.recv_inner())
            .await
            .expect("no response within the test's wait")
    }

    async fn recv_inner(&mut self) -> Option<Value> {
        let mut header = [0u8; 4];
        match self.read.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read from ferry: {e}"),
        }
        let mut payload = vec![0; u32::from_be_bytes(header) as usize];
        match self.read.read_exact(&mut payload).await {
            Ok(_) => {}
            // The host gave up on this client half-way through a frame.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read from ferry: {e}"),
        }
        Some(serde_json::from_slice(&payload).expect("response is JSON"))
    }

    /// Sends one request and waits for its response.
    pub async fn request(&mut self, value: &Value) -> Value {
        self.request_within(value, RESPONSE_WAIT).await
    }

    /// Sends `value` and waits up to `wait` for its response.
    pub async fn request_within(&mut self, value: &Value, wait: Duration) -> Value {
        self.send(value).await;
        self.recv_within(wait)
            .await
            .expect("ferry closed the connection")
    }
}

/// Asserts that `response` is an error with `code` and returns its message.
pub fn expect_error(response: &Value, code: &str) -> String {
    assert_eq!(
        response["status"], "error",
        "expected error `{code}`, got {response}"
    );
    assert_eq!(
        response["error"]["code"], code,
        "wrong error code in {response}"
    );
    response["error"]["message"]
        .as_str()
        .expect("error message is a string")
        .to_owned()
}

/// Asserts that `response` succeeded and returns its result.
pub fn expect_success(response: &Value) -> &Value {
    assert_eq!(
        response["status"], "success",
        "expected success, got {response}"
    );
    &response["result"]
}

/// Asserts an HTTP error reply: its status, and a body that is exactly
/// `{"error": {"code", "message"}}` with `code`. Returns the message.
pub fn assert_error(reply: &HttpReply, status: u16, code: &str) -> String {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    let object = body.as_object().expect("error body is an object");
    assert_eq!(object.len(), 1, "nothing but `error`: {body}");
    let error = body["error"].as_object().expect("`error` is an object");
    assert_eq!(error.len(), 2, "only code and message: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// One service's entry in a `/v1/status` document.
pub fn service_status(status: &Value, name: &str) -> Value {
    status["services"]
        .as_array()
        .expect("a services list")
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} in {status}"))
}

/// An HTTP response as the test saw it on the wire.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A deliberately small HTTP/1.1 client: one request per connection, so
/// the test sees exactly the bytes the gateway sends.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    tokio::time::timeout(
        RESPONSE_WAIT,
        try_http_request(addr, method, path, headers, body),
    )
    .await
    .expect("no HTTP response within the test's wait")
    .expect("HTTP exchange with the gateway")
}

/// [`http_request`] that reports connection errors (a host shutting down)
/// instead of failing the test.
pub async fn try_http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpReply> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed before a whole HTTP head",
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A token signed with HS256 and `secret`, expiring in ten minutes, with
/// `claims` besides `exp`.
pub fn hs256_token(secret: &str, claims: &Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut claims = claims.clone();
    claims["exp"] = exp.into();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a token signs")
}
