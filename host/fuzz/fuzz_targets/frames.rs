//! The frame reader over any byte stream, delivered in chunks of any size:
//! it answers exactly the frames the bytes declare, in order, refuses a
//! declared length over the limit before reading its payload, and ends
//! cleanly only between frames.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use ferry_fuzz::doors::framing::{FrameError, FrameReader};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

const MAX_FRAME: u32 = 1024;

/// Hands out its bytes at most `chunk` at a time, as a socket might.
struct Chunked<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
        let (now, later) = self.bytes.split_at(n);
        buf.put_slice(now);
        self.bytes = later;
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;
    runtime().block_on(async {
        let mut reader =
            FrameReader::new(Chunked { bytes, chunk }, MAX_FRAME, Duration::from_secs(5));
        let mut at = 0usize;
        loop {
            let declared = bytes
                .get(at..at + 4)
                .map(|h| u32::from_be_bytes(h.try_into().unwrap()) as usize);
            match reader.read_frame().await {
                Ok(Some(frame)) => {
                    let len = declared.expect("a frame without a whole header");
                    assert!(len <= MAX_FRAME as usize);
                    assert_eq!(&frame[..], &bytes[at + 4..at + 4 + len]);
                    at += 4 + len;
                }
                Ok(None) => {
                    assert_eq!(at, bytes.len(), "a clean end inside a frame");
                    return;
                }
                Err(FrameError::TooLarge {
                    declared: said,
                    max,
                }) => {
                    assert_eq!(Some(said as usize), declared);
                    assert!(said > max);
                    return;
                }
                Err(FrameError::Truncated) => {
                    let whole = declared.is_some_and(|len| {
                        len <= MAX_FRAME as usize && at + 4 + len <= bytes.len()
                    });
                    assert!(
                        at < bytes.len() && !whole,
                        "truncated, but the frame was all there"
                    );
                    return;
                }
                Err(e) => panic!("unexpected error from a byte slice: {e}"),
            }
        }
    });
});
