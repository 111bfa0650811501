//! A reader thread that decodes the log's files ahead of their consumer.

use std::{
    sync::mpsc::{Receiver, sync_channel},
    thread::JoinHandle,
};

use adrank_featurestore::training_log::Example;

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
        let (sender, receiver) = sync_channel(2);
        let log = log.clone();
        let thread = std::thread::Builder::new()
            .name("adrank-log-reader".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = sender.send(Err(Error::Io { action: "starting the log reader".into(), source: e }));
                        return;
                    }
                };
                for file in log.files() {
                    let chunk = runtime.block_on(log.read(file, window)).map(&make);
                    let failed = chunk.is_err();
                    // A closed channel means the consumer stopped early: nothing more to do.
                    if sender.send(chunk).is_err() || failed {
                        return;
                    }
                }
            })
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
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
        next
    }
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
