//! Idle backend connections shared by the client connections of a proxy
//! thread, per backend: a request that has no connection to its backend
//! at hand takes one here rather than opening one, and a connection whose
//! exchange ended cleanly comes back here when its client goes (a client's
//! `Connection: close` included: the backend is asked to keep the
//! connection, see [`super::http::drop_close`]).
//!
//! What makes a shared connection safe to hand to another client:
//! - it carries no client's identity: a service with
//!   `send_proxy_protocol` never pools (the header named one client);
//! - it is clean: its last response was complete, with known framing,
//!   without `close` on either side, not an upgrade, and nothing unread
//!   (checked by the caller before [`Pool::put`], and probed again by
//!   [`Pool::take`]);
//! - it is fresh: idle at most [`POOL_IDLE`], well below the idle timeouts
//!   of backends (Node's 5 s, nginx's 75 s), so a backend rarely closes one
//!   as it is taken. For that race the caller takes pooled connections only
//!   for idempotent requests without a body, and sends such a request again
//!   on a new connection when a reused one ends before any answer.
//!
//! An in-place restart closes the idle connections (the next process opens
//! its own): they hold no client's state.
//!
//! Each proxy thread ([`super::workers`]) has a shard of its own: a
//! connection is registered with the epoll of the thread that opened it,
//! so only a task on that thread can wait on it without another thread
//! waking it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use super::{backend::Backend, workers};

/// How long a connection may idle in the pool.
pub const POOL_IDLE: Duration = Duration::from_secs(2);
/// Idle connections kept per backend, over all proxy threads; the oldest
/// go first beyond it.
pub const POOL_MAX: usize = 256;

/// Idle connections by backend id and address (a reload may give an id
/// another address), newest last.
type Idle = HashMap<(u32, SocketAddr), Vec<Backend>>;

/// One [`Idle`] per proxy thread.
pub struct Pool {
    shards: Vec<Mutex<Idle>>,
    /// Idle connections kept per backend in each shard: [`POOL_MAX`] over
    /// all of them.
    shard_max: usize,
}

impl Pool {
    /// A pool for `threads` proxy threads.
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        Pool {
            shards: (0..threads).map(|_| Mutex::default()).collect(),
            shard_max: POOL_MAX.div_ceil(threads),
        }
    }

    /// The calling thread's shard.
    fn lock(&self) -> MutexGuard<'_, Idle> {
        lock(&self.shards[workers::current() % self.shards.len()])
    }

    /// Keep `backend`, whose last exchange ended cleanly, for the next
    /// request to it. Closed (dropped) instead when already too old.
    pub fn put(&self, backend: Backend) {
        if backend.last_used.elapsed() >= POOL_IDLE {
            return;
        }
        let evicted = {
            let mut idle = self.lock();
            let list = idle.entry((backend.id, backend.address)).or_default();
            list.push(backend);
            (list.len() > self.shard_max).then(|| list.remove(0))
        };
        // Closed outside the lock.
        drop(evicted);
    }

    /// The newest idle connection to backend `id` at `address` that is
    /// still fresh and open, with nothing unread; the others found on the
    /// way are closed.
    pub fn take(&self, id: u32, address: SocketAddr) -> Option<Backend> {
        loop {
            let backend = self.lock().get_mut(&(id, address))?.pop()?;
            if backend.last_used.elapsed() < POOL_IDLE && backend.idle_and_open() {
                return Some(backend);
            }
        }
    }

    /// Close the connections idle past [`POOL_IDLE`].
    pub fn sweep(&self) {
        for shard in &self.shards {
            let mut expired = Vec::new();
            lock(shard).retain(|_, list| {
                let (fresh, old) = std::mem::take(list)
                    .into_iter()
                    .partition(|b: &Backend| b.last_used.elapsed() < POOL_IDLE);
                *list = fresh;
                expired.extend(old);
                !list.is_empty()
            });
            drop(expired);
        }
    }

    /// Close every idle connection.
    pub fn clear(&self) {
        for shard in &self.shards {
            let all = std::mem::take(&mut *lock(shard));
            drop(all);
        }
    }

    /// Idle connections held, over all backends and threads.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).values().map(Vec::len).sum::<usize>())
            .sum()
    }
}

fn lock(shard: &Mutex<Idle>) -> MutexGuard<'_, Idle> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sweep `pool` every half [`POOL_IDLE`], for ever.
pub async fn sweep_every(pool: &Pool) {
    let mut tick = tokio::time::interval(POOL_IDLE / 2);
    loop {
        tick.tick().await;
        pool.sweep();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
        time::Instant,
    };

    use super::*;
    use crate::proxy::stats::ProxyStats;

    /// Connections to a local listener, as backend 1, with the server
    /// side of each.
    async fn connections(n: usize) -> (Vec<Backend>, Vec<TcpStream>, Arc<ProxyStats>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stats = Arc::new(ProxyStats::default());
        let (mut backends, mut servers) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let stream = TcpStream::connect(address).await.unwrap();
            servers.push(listener.accept().await.unwrap().0);
            stats.opened(1);
            backends.push(Backend::adopt(&stats, 1, address, address, stream));
        }
        (backends, servers, stats)
    }

    #[tokio::test]
    async fn the_newest_clean_connection_is_taken() {
        let (backends, servers, stats) = connections(4).await;
        let address = backends[0].address;
        let ports: Vec<u16> = backends
            .iter()
            .map(|b| b.stream.local_addr().unwrap().port())
            .collect();
        let pool = Pool::new(1);
        for b in backends {
            pool.put(b);
        }
        assert_eq!(pool.len(), 4);
        // Another backend, or the same id at another address, has none.
        assert!(pool.take(2, address).is_none());
        assert!(pool.take(1, "127.0.0.1:1".parse().unwrap()).is_none());

        // The newest: closed by its server, then one with bytes nobody
        // asked for. Both are passed over and closed.
        let mut servers = servers;
        servers.pop();
        servers[2].write_all(b"unasked").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let taken = pool.take(1, address).expect("a clean connection");
        assert_eq!(taken.stream.local_addr().unwrap().port(), ports[1]);
        assert_eq!(pool.len(), 1);
        assert_eq!(stats.backend(1).active, 2, "the two passed over are closed");
        drop(taken);

        // Too old to be taken, and swept.
        let mut left = pool.take(1, address).unwrap();
        left.last_used = Instant::now() - POOL_IDLE;
        pool.put(left);
        assert_eq!(pool.len(), 0, "an expired connection is not kept");
        assert_eq!(stats.backend(1).active, 0);
    }

    #[tokio::test]
    async fn sweep_closes_the_expired_and_clear_closes_all() {
        let (mut backends, _servers, stats) = connections(3).await;
        let pool = Pool::new(1);
        let address = backends[0].address;
        let last = backends.pop().unwrap();
        for b in backends {
            pool.put(b);
        }
        pool.put(last);
        // The first two age past the limit while pooled.
        for b in pool
            .lock()
            .get_mut(&(1, address))
            .unwrap()
            .iter_mut()
            .take(2)
        {
            b.last_used = Instant::now() - POOL_IDLE;
        }
        pool.sweep();
        assert_eq!(pool.len(), 1);
        assert_eq!(stats.backend(1).active, 1);
        pool.clear();
        assert_eq!(pool.len(), 0);
        assert_eq!(stats.backend(1).active, 0);
    }

    #[tokio::test]
    async fn at_most_pool_max_per_backend() {
        let (backends, _servers, stats) = connections(3).await;
        let pool = Pool::new(1);
        let address = backends[0].address;
        for b in backends {
            pool.put(b);
        }
        // Filled up with connections elsewhere filed under the same
        // backend, the three oldest (counted in `stats`) are closed first.
        let (more, _more_servers, _) = connections(POOL_MAX).await;
        for mut b in more {
            b.address = address;
            pool.put(b);
        }
        assert_eq!(pool.len(), POOL_MAX);
        assert_eq!(stats.backend(1).active, 0, "the three oldest are closed");
    }

    #[tokio::test]
    async fn the_limit_is_shared_by_the_threads_shards() {
        let (backends, _servers, stats) = connections(POOL_MAX).await;
        // Two proxy threads: this thread files under the first one's shard,
        // which keeps its half of the limit.
        let pool = Pool::new(2);
        for b in backends {
            pool.put(b);
        }
        assert_eq!(pool.len(), POOL_MAX / 2);
        assert_eq!(stats.backend(1).active, (POOL_MAX / 2) as u64);
    }
}
