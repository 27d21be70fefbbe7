//! A client of the events socket written from host/PROTOCOL.md
//! ("The events socket": newline-delimited JSON objects with a `type`),
//! not from the host's types.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long a test waits for a line it expects.
pub const WAIT: Duration = Duration::from_secs(10);

/// One connection to the events socket.
pub struct Consumer {
    pub read: BufReader<OwnedReadHalf>,
    pub write: OwnedWriteHalf,
}

impl Consumer {
    pub async fn connect(path: &Path) -> Consumer {
        let (read, write) = UnixStream::connect(path).await.unwrap().into_split();
        Consumer {
            read: BufReader::new(read),
            write,
        }
    }

    pub async fn send(&mut self, message: &Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.write.write_all(line.as_bytes()).await.unwrap();
    }

    /// The next line, or `None` once the host has closed.
    pub async fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, self.read.read_line(&mut line))
            .await
            .expect("no line within the test's wait")
            .unwrap_or(0);
        (n > 0).then(|| serde_json::from_str(&line).expect("a line of JSON"))
    }

    /// The next line of `kind`, skipping events.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let line = self.recv().await.expect("the host closed the connection");
            if line["type"] == kind {
                return line;
            }
            assert_eq!(line["type"], "event", "expected `{kind}`, got {line}");
        }
    }

    pub async fn hello(
        path: &Path,
        consumer: &str,
        key: &str,
        topics: &[&str],
    ) -> (Consumer, Value) {
        let mut c = Consumer::connect(path).await;
        c.send(&json!({"type": "hello", "consumer": consumer, "event_key": key, "topics": topics}))
            .await;
        let ack = c.recv().await.expect("a hello_ack");
        assert_eq!(ack["type"], "hello_ack", "{ack}");
        (c, ack)
    }
}
