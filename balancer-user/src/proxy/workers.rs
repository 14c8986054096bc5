//! The threads client connections run on: one single-threaded tokio
//! runtime per CPU, each with its own epoll, the way HAProxy runs one
//! event loop per thread. Every thread accepts on the VIPs (each on its
//! own descriptor of the listening socket, see [`super::listen`]), and a
//! connection stays on the thread that accepted it, with its backend
//! connections (registered there too, and pooled there: [`super::pool`]
//! keeps one shard per thread). So a request's readiness
//! events, its task and its backend meet on one thread: no work stealing,
//! and no other thread woken per request, which on a gateway whose cores
//! are busy is time every request waited for (issue 19's bench: keep-alive
//! requests/s 0.80–0.96× HAProxy's with the shared multi-threaded runtime,
//! 1.07–1.09× like this; bench/results/proxy.md).

use std::{
    cell::Cell,
    future::Future,
    io,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::runtime::{Builder, Handle};

thread_local! {
    /// The index of the worker this thread is; 0 on any other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running the caller (0 outside the workers).
pub fn current() -> usize {
    INDEX.get()
}

pub struct Workers {
    handles: Vec<Handle>,
    /// The next worker [`Workers::spawn`] gives a task to (a connection
    /// resumed after a restart in place), taken in turn.
    next: AtomicUsize,
}

impl Workers {
    /// `count` threads (at least one), each running its runtime until the
    /// process ends.
    pub fn start(count: usize) -> io::Result<Self> {
        let mut handles = Vec::new();
        for index in 0..count.max(1) {
            // The runtime is made on its thread, which keeps it: one made
            // here would be dropped here if the thread could not start,
            // and dropping a runtime inside the daemon's panics.
            let (made, handle) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("proxy-{index}"))
                .spawn(move || {
                    INDEX.set(index);
                    match Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => {
                            let _ = made.send(Ok(runtime.handle().clone()));
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = made.send(Err(e));
                        }
                    }
                })?;
            let handle = handle.recv().map_err(|_| {
                io::Error::other(format!("proxy thread {index} ended before its runtime ran"))
            })??;
            handles.push(handle);
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    /// One per CPU the daemon may run on.
    pub fn per_cpu() -> io::Result<Self> {
        Workers::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Run `task` on worker `index`.
    pub fn spawn_on<F>(&self, index: usize, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handles[index % self.handles.len()].spawn(task);
    }

    /// Run `task` on the next worker in turn. Sockets it makes or adopts
    /// (`TcpStream::from_std`) inside are that worker's.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_go_to_each_worker_in_turn_and_know_which() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                tx.send((current(), std::thread::current().name().map(str::to_owned)))
                    .unwrap();
            });
        }
        let mut seen: Vec<_> = (0..4).map(|_| rx.recv().unwrap()).collect();
        seen.sort();
        let name = |i: usize| Some(format!("proxy-{i}"));
        assert_eq!(
            seen,
            [(0, name(0)), (0, name(0)), (1, name(1)), (1, name(1))]
        );
        assert_eq!(current(), 0, "a thread that is no worker");
        workers.spawn_on(1, async move {
            tx.send((current(), std::thread::current().name().map(str::to_owned)))
                .unwrap();
        });
        assert_eq!(rx.recv().unwrap(), (1, name(1)), "spawn_on");
    }
}
