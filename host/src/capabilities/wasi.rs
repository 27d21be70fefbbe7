//! WASI for plugins: the sandbox every instance gets (nothing granted: no
//! folders, no sockets, no environment, no arguments), and stdout/stderr
//! turned into host log lines tagged with the plugin's name.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::log::{LogBudget, Source, emit};
use tokio::io::AsyncWrite;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 8 * 1024;

/// Builds the WASI context of one instance. Randomness and clocks are the
/// only capabilities; everything else is denied by `WasiCtxBuilder`'s
/// defaults, which we keep on purpose.
pub fn sandbox(plugin: &Arc<str>, budget: &Arc<LogBudget>) -> WasiCtx {
    WasiCtx::builder()
        .stdout(PluginOutput::new(
            plugin.clone(),
            budget.clone(),
            Stream::Stdout,
        ))
        .stderr(PluginOutput::new(
            plugin.clone(),
            budget.clone(),
            Stream::Stderr,
        ))
        .build()
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Where a plugin's stdout or stderr goes: the host log, line by line.
struct PluginOutput {
    plugin: Arc<str>,
    budget: Arc<LogBudget>,
    stream: Stream,
}

impl PluginOutput {
    fn new(plugin: Arc<str>, budget: Arc<LogBudget>, stream: Stream) -> Self {
        PluginOutput {
            plugin,
            budget,
            stream,
        }
    }

    fn writer(&self) -> LineLog {
        LineLog {
            plugin: self.plugin.clone(),
            budget: self.budget.clone(),
            stream: self.stream,
            pending: Vec::new(),
        }
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }

    // Written synchronously, so that what a plugin printed right before it
    // trapped is in the log before the trap is reported.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }
}

/// Splits written bytes into lines and logs each complete one.
struct LineLog {
    plugin: Arc<str>,
    budget: Arc<LogBudget>,
    stream: Stream,
    pending: Vec<u8>,
}

impl LineLog {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&bytes[..pos]);
            self.emit();
            bytes = &bytes[pos + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            self.emit();
            self.pending = rest;
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.trim_end_matches('\r');
        let source = match self.stream {
            Stream::Stdout => Source::Stdout,
            Stream::Stderr => Source::Stderr,
        };
        emit(&self.plugin, &self.budget, source, line, None);
        self.pending.clear();
    }
}

impl Drop for LineLog {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineLog {
    async fn ready(&mut self) {}
}

impl OutputStream for LineLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LineLog {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
