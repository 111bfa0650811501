//! A reader thread that decodes the log's files ahead of their consumer.

use std::{
    sync::mpsc::{Receiver, sync_channel},
    thread::JoinHandle,
};

use adrank_contracts::training_log::Example;

use super::{LogWindow, Window};
use crate::{Error, Result};

/// Chunks (one per file) made by a reader thread from the examples of a window; at most two
/// wait to be consumed, so memory stays bounded by a few files.
#[derive(Debug)]
pub struct RowStream<T> {
    receiver: Option<Receiver<Result<T>>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> RowStream<T> {
    /// Reads every file of `log` and sends `make(examples in window)` for each.
    pub fn spawn(log: &LogWindow, window: Window, make: impl Fn(Vec<Example>) -> T + Send + 'static) -> Self {
        let log = log.clone();
        Self::reading(move |send| {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    send(Err(Error::Io { action: "starting the log reader".into(), source: e }));
                    return;
                }
            };
            for file in log.files() {
                let chunk = runtime.block_on(log.read(file, window)).map(&make);
                let failed = chunk.is_err();
                // A refused send means the consumer stopped early: nothing more to do.
                if !send(chunk) || failed {
                    return;
                }
            }
        })
    }

    /// Runs `read` on a thread of its own; it sends chunks with the function it is given, which
    /// says whether the consumer still wants more.
    fn reading(read: impl FnOnce(&dyn Fn(Result<T>) -> bool) + Send + 'static) -> Self {
        let (sender, receiver) = sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("adrank-log-reader".into())
            .spawn(move || read(&|chunk| sender.send(chunk).is_ok()))
            .expect("spawning a thread only fails when the OS is out of resources");
        Self { receiver: Some(receiver), thread: Some(thread) }
    }
}

impl<T> Iterator for RowStream<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        let next = self.receiver.as_ref()?.recv().ok();
        if next.is_none() {
            self.receiver = None;
            // The channel closes when the reader ends, normally or by a panic. A panic must
            // fail training: the stream would otherwise end early, and the model would train
            // on part of the window without a word.
            if let Some(Err(panic)) = self.thread.take().map(JoinHandle::join) {
                return Some(Err(Error::Reader(panic_message(panic.as_ref()))));
            }
        }
        next
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl<T> Drop for RowStream<T> {
    fn drop(&mut self) {
        // Closing the channel stops the reader at its next send.
        self.receiver = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_panics_fails_the_stream_instead_of_ending_it() {
        let stream = RowStream::reading(|send| {
            send(Ok(1));
            send(Ok(2));
            panic!("a corrupt row group");
        });
        let items: Vec<Result<i32>> = stream.collect();
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[..2].iter().map(|r| *r.as_ref().unwrap()).collect::<Vec<_>>(), [1, 2]);
        let error = items[2].as_ref().unwrap_err().to_string();
        assert!(error.contains("a corrupt row group") && error.contains("reader"), "{error}");
    }

    #[test]
    fn a_reader_that_finishes_ends_the_stream() {
        let stream = RowStream::reading(|send| {
            send(Ok(1));
        });
        assert_eq!(stream.map(Result::unwrap).collect::<Vec<i32>>(), [1]);
    }
}
