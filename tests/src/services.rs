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
