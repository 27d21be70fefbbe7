//! The database servers and brokers the tests run against: reached on loopback, and
//! started with the machine's own commands when they are down. Under
//! `CI=true` a server that cannot be reached fails the test; elsewhere the
//! test says so and skips.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Makes sure something listens on `addr`, starting it with `start` (a
/// shell command) if not. `false` means skip (never under `CI=true`).
fn ensure(name: &str, addr: &str, start: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    if reachable(addr) {
        return true;
    }
    eprintln!("{name} is not answering on {addr}; starting it: {start}");
    let _ = Command::new("sh").arg("-c").arg(start).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if reachable(addr) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let message = format!("{name} is not reachable on {addr}, and `{start}` did not start it");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of a passing test, and a skip must not pass unseen.
    use std::io::Write as _;
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {message}");
    false
}

pub const MARIADB_ADDR: &str = "127.0.0.1:3306";
pub const MARIADB_START: &str =
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd";
pub const POSTGRES_ADDR: &str = "127.0.0.1:5432";
pub const POSTGRES_START: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// The MariaDB `test` database, started if need be.
pub fn mariadb_url() -> Option<String> {
    ensure("MariaDB", MARIADB_ADDR, MARIADB_START)
        .then(|| "mysql://root@127.0.0.1:3306/test".into())
}

/// The PostgreSQL `test` database, started if need be.
pub fn postgres_url() -> Option<String> {
    ensure("PostgreSQL", POSTGRES_ADDR, POSTGRES_START)
        .then(|| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub const RABBITMQ_ADDR: &str = "127.0.0.1:5672";
pub const RABBITMQ_START: &str = "rabbitmq-server -detached";

/// The RabbitMQ broker (guest/guest, vhost `/`), started if need be.
pub fn rabbitmq_url() -> Option<String> {
    ensure("RabbitMQ", RABBITMQ_ADDR, RABBITMQ_START)
        .then(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub const NATS_ADDR: &str = "127.0.0.1:4222";
pub const NATS_START: &str = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log";

/// The NATS server (with JetStream), started if need be.
pub fn nats_url() -> Option<String> {
    ensure("NATS", NATS_ADDR, NATS_START).then(|| "nats://127.0.0.1:4222".into())
}

/// A NATS server of a test's own, on a port of its own, so the test may
/// stop and start it without touching the machine's server. Killed (by
/// its pid) when dropped.
pub struct OwnNats {
    pub port: u16,
    child: Option<std::process::Child>,
    /// JetStream's store, when it has one.
    store: Option<std::path::PathBuf>,
}

impl OwnNats {
    /// Starts `nats-server` on a free loopback port and waits until it
    /// listens.
    pub fn start() -> OwnNats {
        Self::start_in(None)
    }

    /// With JetStream, storing in a scratch folder of its own.
    pub fn with_jetstream() -> OwnNats {
        Self::start_in(Some(crate::scratch_dir().join("jetstream")))
    }

    fn start_in(store: Option<std::path::PathBuf>) -> OwnNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = OwnNats {
            port,
            child: None,
            store,
        };
        nats.restart();
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server, at once (SIGKILL: clients see the connection cut).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let mut command = Command::new("/usr/sbin/nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(store) = &self.store {
            command.arg("-js").arg("-sd").arg(store);
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server runs (it is installed with the NATS service)");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !reachable(addr) {
            assert!(
                Instant::now() < deadline,
                "our own nats-server does not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
        if let Some(store) = &self.store {
            let _ = std::fs::remove_dir_all(store);
        }
    }
}
