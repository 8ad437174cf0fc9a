//! WASI's blocking calls, each ended by the deadline of the plugin call it happens in.
//!
//! Epoch interruption stops a guest that loops, but not one that waits inside the host: a
//! wasip2 guest's `std::thread::sleep` is `subscribe-duration` + `pollable.block`, which
//! wasmtime-wasi runs as a blocking wait on the calling thread, where no epoch check ever
//! happens. `sleep(Duration::MAX)` would hold a serving thread and its pool permit for good,
//! and never count as a failure.
//!
//! So every `wasi:io` function that can wait (`poll`, `pollable.block`, the `blocking-*`
//! stream methods) is linked here in place of wasmtime-wasi's, as the same wait under
//! `tokio::time::timeout_at(deadline)`. A wait that reaches the deadline traps the call with
//! [`BudgetExceeded`]: the instance is discarded and the failure counted like a time-budget
//! trap. Everything that cannot wait is wasmtime-wasi's own code.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll::{
    Host as AsyncPoll, HostPollable as AsyncPollable,
};
use wasmtime_wasi_io::bindings::wasi::io::streams::{
    HostInputStream as AsyncInputStream, HostOutputStream as AsyncOutputStream,
};
use wasmtime_wasi_io::poll::DynPollable;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream, StreamError};

/// A blocking host call was still waiting when the plugin call's time budget ran out.
#[derive(Debug, thiserror::Error)]
#[error("a blocking host call was still waiting when the call's time budget ran out")]
pub struct BudgetExceeded;

/// What the bounded functions need of an instance's state.
pub struct BoundedIo<'a> {
    pub table: &'a mut ResourceTable,
    /// When the plugin call under way must end.
    pub deadline: tokio::time::Instant,
}

/// Runs `wait` on the calling thread until it finishes or `deadline` passes.
fn until<F: Future>(deadline: tokio::time::Instant, wait: F) -> Option<F::Output> {
    in_tokio(async move { tokio::time::timeout_at(deadline, wait).await.ok() })
}

struct Bounded;

impl HasData for Bounded {
    type Data<'a> = BoundedIo<'a>;
}

/// Replaces the waiting functions of `wasi:io/poll` and `wasi:io/streams` that
/// `wasmtime_wasi::p2::add_to_linker_sync` linked with bounded ones.
pub fn link<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> BoundedIo<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    poll::add_to_linker::<T, Bounded>(linker, view)?;
    streams::add_to_linker::<T, Bounded>(linker, view)?;
    linker.allow_shadowing(false);
    Ok(())
}

fn stream_timeout() -> StreamError {
    StreamError::Trap(BudgetExceeded.into())
}

impl poll::Host for BoundedIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        until(self.deadline, AsyncPoll::poll(self.table, pollables)).ok_or(BudgetExceeded)?
    }
}

impl poll::HostPollable for BoundedIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        poll::HostPollable::ready(self.table, pollable)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        until(self.deadline, AsyncPollable::block(self.table, pollable)).ok_or(BudgetExceeded)?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.table, pollable)
    }
}

impl streams::Host for BoundedIo<'_> {
    fn convert_stream_error(
        &mut self,
        error: StreamError,
    ) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.table, error)
    }
}

impl streams::HostInputStream for BoundedIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        streams::HostInputStream::drop(self.table, stream)
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> Result<Vec<u8>, StreamError> {
        streams::HostInputStream::read(self.table, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> Result<Vec<u8>, StreamError> {
        until(
            self.deadline,
            AsyncInputStream::blocking_read(self.table, stream, len),
        )
        .ok_or_else(stream_timeout)?
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> Result<u64, StreamError> {
        streams::HostInputStream::skip(self.table, stream, len)
    }

    fn blocking_skip(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> Result<u64, StreamError> {
        until(
            self.deadline,
            AsyncInputStream::blocking_skip(self.table, stream, len),
        )
        .ok_or_else(stream_timeout)?
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.table, stream)
    }
}

impl streams::HostOutputStream for BoundedIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        streams::HostOutputStream::drop(self.table, stream)
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> Result<u64, StreamError> {
        streams::HostOutputStream::check_write(self.table, stream)
    }

    fn write(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> Result<(), StreamError> {
        streams::HostOutputStream::write(self.table, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> Result<(), StreamError> {
        until(
            self.deadline,
            AsyncOutputStream::blocking_write_and_flush(self.table, stream, bytes),
        )
        .ok_or_else(stream_timeout)?
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> Result<(), StreamError> {
        until(
            self.deadline,
            AsyncOutputStream::blocking_write_zeroes_and_flush(self.table, stream, len),
        )
        .ok_or_else(stream_timeout)?
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.table, stream)
    }

    fn write_zeroes(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> Result<(), StreamError> {
        streams::HostOutputStream::write_zeroes(self.table, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> Result<(), StreamError> {
        streams::HostOutputStream::flush(self.table, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> Result<(), StreamError> {
        until(
            self.deadline,
            AsyncOutputStream::blocking_flush(self.table, stream),
        )
        .ok_or_else(stream_timeout)?
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> Result<u64, StreamError> {
        streams::HostOutputStream::splice(self.table, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> Result<u64, StreamError> {
        until(
            self.deadline,
            AsyncOutputStream::blocking_splice(self.table, dst, src, len),
        )
        .ok_or_else(stream_timeout)?
    }
}
