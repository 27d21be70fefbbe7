//! Framing: a frame is a 4-byte big-endian length and that many bytes of
//! payload. This module turns a byte stream into frames (bounded, and cut
//! off when a frame stalls) and seals a payload built after four
//! placeholder bytes into a frame. See `host/PROTOCOL.md`.

use std::io;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Fills in the length prefix of a frame built after 4 placeholder bytes.
pub fn seal(frame: &mut [u8]) {
    let len = u32::try_from(frame.len() - 4).expect("a response frame is under 4 GiB");
    frame[..4].copy_from_slice(&len.to_be_bytes());
}

/// Why reading a frame stopped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {declared} bytes is over the limit of {max} bytes")]
    TooLarge { declared: u32, max: u32 },
    #[error("a frame did not arrive whole within {0:?} of its first byte")]
    Stalled(Duration),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Turns a byte stream into frames.
pub struct FrameReader<R> {
    inner: R,
    buffer: BytesMut,
    max_frame: u32,
    stall_timeout: Duration,
    /// When the frame being read must be complete: set by its first byte.
    frame_deadline: Option<tokio::time::Instant>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame: u32, stall_timeout: Duration) -> Self {
        FrameReader {
            inner,
            buffer: BytesMut::with_capacity(8 * 1024),
            max_frame,
            stall_timeout,
            frame_deadline: None,
        }
    }

    /// The stream frames are read from.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next frame's payload; `None` on a clean end of stream (between
    /// frames). A declared length over the limit is refused before any of
    /// its payload is awaited. Between frames a connection may idle for as
    /// long as it likes; once a frame has begun, all of it must arrive
    /// within the stall timeout of its first byte (a byte now and then does
    /// not keep a connection).
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(frame) = self.parse_frame()? {
                self.frame_deadline = None;
                return Ok(Some(frame));
            }
            let read = if self.buffer.is_empty() {
                self.frame_deadline = None;
                self.inner.read_buf(&mut self.buffer).await?
            } else {
                let deadline = *self
                    .frame_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + self.stall_timeout);
                tokio::time::timeout_at(deadline, self.inner.read_buf(&mut self.buffer))
                    .await
                    .map_err(|_| FrameError::Stalled(self.stall_timeout))??
            };
            if read == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    fn parse_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(header) = self.buffer.get(..4) else {
            return Ok(None);
        };
        let declared = u32::from_be_bytes(header.try_into().expect("four bytes"));
        if declared > self.max_frame {
            return Err(FrameError::TooLarge {
                declared,
                max: self.max_frame,
            });
        }
        let total = 4 + declared as usize;
        if self.buffer.len() < total {
            // Grow in steps, so a header that promises a large frame and then
            // stalls does not pin a large buffer.
            self.buffer
                .reserve((total - self.buffer.len()).min(64 * 1024));
            return Ok(None);
        }
        self.buffer.advance(4);
        Ok(Some(self.buffer.split_to(declared as usize).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn a_frame_trickling_in_is_cut_off_at_its_deadline() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&[0, 0, 0, 10]).await.unwrap();
            for b in b"{\"a\":1234}" {
                tokio::time::sleep(Duration::from_millis(60)).await;
                if tx.write_all(&[*b]).await.is_err() {
                    return;
                }
            }
        });
        let mut reader = FrameReader::new(rx, 1024, Duration::from_millis(250));
        let began = std::time::Instant::now();
        assert!(matches!(
            reader.read_frame().await,
            Err(FrameError::Stalled(_))
        ));
        assert!(began.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn reads_frames_split_anywhere() {
        let mut bytes = frame(b"{\"a\":1}");
        bytes.extend(frame(b"[]"));
        let (mut tx, rx) = tokio::io::duplex(3);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in bytes.chunks(2) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(rx, 1024, Duration::from_secs(5));
        assert_eq!(
            &reader.read_frame().await.unwrap().unwrap()[..],
            b"{\"a\":1}"
        );
        assert_eq!(&reader.read_frame().await.unwrap().unwrap()[..], b"[]");
        assert!(reader.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refuses_oversized_frames_from_the_header() {
        let mut reader = FrameReader::new(&[0u8, 0, 4, 1][..], 1024, Duration::from_secs(5));
        assert!(matches!(
            reader.read_frame().await,
            Err(FrameError::TooLarge {
                declared: 1025,
                max: 1024
            })
        ));
    }
}
