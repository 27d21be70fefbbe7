//! The benchmarks' native baselines: the framed-JSON socket server they
//! share, and its frames.

use std::path::Path;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Serves Ferry's framed protocol on `path`: every frame becomes its own
/// task running `handle`, like in Ferry, so slow requests never block the
/// connection. With `batch`, the writer batches responses the way Ferry's
/// does. `handle` answers a whole frame, length prefix included.
pub async fn serve_frames<F, Fut>(path: &Path, batch: bool, handle: F)
where
    F: Fn(Vec<u8>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<u8>> + Send + 'static,
{
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind");
    println!("listening");
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        tokio::spawn(connection(stream, batch, handle.clone()));
    }
}

async fn connection<F, Fut>(stream: UnixStream, batch: bool, handle: F)
where
    F: Fn(Vec<u8>) -> Fut + Send + 'static,
    Fut: Future<Output = Vec<u8>> + Send + 'static,
{
    let (read, write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut out = BufWriter::new(write);
        while let Some(frame) = rx.recv().await {
            if out.write_all(&frame).await.is_err() {
                return;
            }
            if batch {
                // The same write batching as Ferry's socket writer.
                tokio::task::yield_now().await;
            }
            while let Ok(frame) = rx.try_recv() {
                if out.write_all(&frame).await.is_err() {
                    return;
                }
            }
            if out.flush().await.is_err() {
                return;
            }
        }
    });
    let mut read = BufReader::new(read);
    loop {
        let mut header = [0u8; 4];
        if read.read_exact(&mut header).await.is_err() {
            return;
        }
        let mut frame = vec![0; u32::from_be_bytes(header) as usize];
        if read.read_exact(&mut frame).await.is_err() {
            return;
        }
        let (tx, answer) = (tx.clone(), handle(frame));
        tokio::spawn(async move {
            let _ = tx.send(answer.await);
        });
    }
}

/// `value` as a frame: length prefix, then its JSON.
pub fn json_frame(value: &impl Serialize) -> Vec<u8> {
    let mut out = vec![0; 4];
    serde_json::to_writer(&mut out, value).unwrap();
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}
