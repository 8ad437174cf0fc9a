//! The last bytes a plugin wrote to its standard output and error, kept to explain a trap.
//!
//! Plugins have no standard streams to speak of: nothing they write reaches the host's
//! terminal or log. But the toolchains of other languages report a fatal error only there: an
//! exception that escapes a componentize-py export prints its Python traceback to stderr and
//! aborts, and componentize-js prints the JavaScript error. Without it a trap reads "error while
//! executing at wasm backtrace" and a list of interpreter frames. So both streams go into one
//! small buffer that keeps the last [`TAIL_BYTES`] of the call under way (cleared as each call
//! begins, so one request's output never reaches another's error); a trap's reason ends with
//! them, and nothing else reads them (a plugin talks to the log through `host-log`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamResult};

/// Bytes kept: a Python traceback of a few frames with its last line, the exception; as much as
/// the host keeps of a plugin's error text, so that a trap's reason stays small.
pub const TAIL_BYTES: usize = 1024;

/// One instance's stdout and stderr together, last [`TAIL_BYTES`] kept. Clones share it.
#[derive(Clone, Default)]
pub struct OutputTail(Arc<Shared>);

#[derive(Default)]
struct Shared {
    tail: Mutex<VecDeque<u8>>,
    /// Whether anything was written since the last clear: [`OutputTail::clear`] runs before
    /// every plugin call, and almost no call writes, so it takes the lock only when one did.
    written: AtomicBool,
}

impl OutputTail {
    /// Forgets what earlier calls wrote.
    pub fn clear(&self) {
        // A plain load first: a swap is as dear as the lock it would spare.
        if self.0.written.load(Ordering::Relaxed) {
            let mut tail = self.lock();
            tail.clear();
            self.0.written.store(false, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<u8>> {
        self.0.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, bytes: &[u8]) {
        let mut tail = self.lock();
        self.0.written.store(true, Ordering::Relaxed);
        let kept = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
        let overflow = (tail.len() + kept.len()).saturating_sub(TAIL_BYTES);
        tail.drain(..overflow);
        tail.extend(kept);
    }

    /// What was kept, as text (invalid UTF-8 replaced), trimmed; `None` when nothing was
    /// written.
    pub fn text(&self) -> Option<String> {
        let tail = self.lock();
        let (front, back) = tail.as_slices();
        let text = String::from_utf8_lossy(&[front, back].concat())
            .trim()
            .to_string();
        (!text.is_empty()).then_some(text)
    }
}

impl IsTerminal for OutputTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Writes always succeed at once: the guest never waits on, nor fails by, its output.
#[async_trait::async_trait]
impl Pollable for OutputTail {
    async fn ready(&mut self) {}
}

impl OutputStream for OutputTail {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for OutputTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_of_everything_written() {
        let tail = OutputTail::default();
        assert_eq!(tail.text(), None);
        let mut stream = tail.p2_stream();
        stream
            .write(Bytes::from_static(b"Traceback (most recent call last):\n"))
            .unwrap();
        assert_eq!(
            tail.text().as_deref(),
            Some("Traceback (most recent call last):")
        );
        stream
            .write(Bytes::from(vec![b'x'; 3 * TAIL_BYTES]))
            .unwrap();
        stream
            .write(Bytes::from_static(b"ValueError: bad snapshot\n"))
            .unwrap();
        let text = tail.text().unwrap();
        assert_eq!(text.len(), TAIL_BYTES - 1, "trimmed of its newline");
        assert!(text.ends_with("xValueError: bad snapshot"), "{text}");
        tail.clear();
        assert_eq!(tail.text(), None);
    }
}
