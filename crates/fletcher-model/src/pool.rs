//! A pool of `f32` buffers for activations and workspaces, so that a device
//! running batch after batch reuses its memory instead of allocating and
//! freeing several large vectors per batch.
//!
//! [`BufferPool::take`] hands out a [`PooledBuffer`] of exactly the asked
//! length, reusing the smallest held buffer whose capacity is large enough
//! (a *hit*) or allocating a new one (a *miss*). Dropping the buffer, or
//! [`BufferPool::give_back`] for a vector detached with
//! [`PooledBuffer::into_vec`], returns it. New allocations are rounded up to
//! a size class (at most 1/8 more) so that slightly larger batches later
//! still hit.
//!
//! What the pool keeps is bounded by [`PoolLimits`]: at most `max_buffers`
//! buffers and `max_bytes` bytes of capacity. A returned buffer larger than
//! `max_bytes` is freed; otherwise the smallest held buffers are freed until
//! both bounds hold. So a device holds at most the bound plus the buffers of
//! the batch it is running.
//!
//! The contents of a reused buffer are whatever its previous user left:
//! callers must write every element before reading it (the encoder's kernels
//! overwrite their outputs).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

const F32: usize = std::mem::size_of::<f32>();

/// Receives the pool's events, for metrics. Every method defaults to
/// nothing.
pub trait PoolObserver: Send + Sync {
    /// A request was served from a held buffer.
    fn hit(&self) {}
    /// A request needed a new allocation.
    fn miss(&self) {}
    /// The held bytes and buffers changed by these amounts.
    fn held(&self, bytes_delta: i64, buffers_delta: i64) {
        let _ = (bytes_delta, buffers_delta);
    }
}

/// How much a pool may keep between uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Most buffers held.
    pub max_buffers: usize,
    /// Most bytes of capacity held.
    pub max_bytes: usize,
}

impl PoolLimits {
    /// A pool that keeps nothing: every request allocates.
    pub const NONE: Self = Self {
        max_buffers: 0,
        max_bytes: 0,
    };
}

impl Default for PoolLimits {
    /// 16 buffers and 256 MiB: one batch of the encoder takes five buffers,
    /// about 40 KiB per token for a 384-wide model.
    fn default() -> Self {
        Self {
            max_buffers: 16,
            max_bytes: 256 << 20,
        }
    }
}

/// Counters of a pool since it was created, and what it holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests served from a held buffer.
    pub hits: u64,
    /// Requests that allocated.
    pub misses: u64,
    /// Bytes of capacity held.
    pub bytes: usize,
    /// Buffers held.
    pub buffers: usize,
}

#[derive(Default)]
struct State {
    free: Vec<Vec<f32>>,
    stats: PoolStats,
}

/// A bounded pool of `f32` buffers; see the [module docs](self). Cheap to
/// lock: one short critical section per request and per return.
pub struct BufferPool {
    limits: PoolLimits,
    state: Mutex<State>,
    observer: Option<Arc<dyn PoolObserver>>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new(PoolLimits::default())
    }
}

impl BufferPool {
    /// An empty pool keeping at most `limits`.
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
            observer: None,
        }
    }

    /// An empty pool that reports its events to `observer`.
    pub fn with_observer(limits: PoolLimits, observer: Arc<dyn PoolObserver>) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
            observer: Some(observer),
        }
    }

    /// The pool's bounds.
    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Hits and misses so far, and what the pool holds now.
    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock is held cannot leave the list inconsistent
        // (every critical section is a push, a remove or counter updates).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn retains(&self) -> bool {
        self.limits.max_buffers > 0 && self.limits.max_bytes > 0
    }

    /// A buffer of exactly `len` elements, reused when the pool holds one
    /// large enough. Its contents are unspecified.
    pub fn take(&self, len: usize) -> PooledBuffer<'_> {
        PooledBuffer {
            pool: self,
            buf: self.take_vec(len),
        }
    }

    /// As [`take`](Self::take), detached from the pool: hand it back with
    /// [`give_back`](Self::give_back) (or let it be freed).
    pub fn take_vec(&self, len: usize) -> Vec<f32> {
        let reused = {
            let mut state = self.lock();
            let best = state
                .free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            match best {
                Some(i) => {
                    let buf = state.free.swap_remove(i);
                    state.stats.hits += 1;
                    state.stats.bytes -= buf.capacity() * F32;
                    state.stats.buffers -= 1;
                    Some(buf)
                }
                None => {
                    state.stats.misses += 1;
                    None
                }
            }
        };
        match reused {
            Some(mut buf) => {
                if let Some(o) = &self.observer {
                    o.hit();
                    o.held(-((buf.capacity() * F32) as i64), -1);
                }
                if buf.len() >= len {
                    buf.truncate(len);
                } else {
                    buf.resize(len, 0.0);
                }
                buf
            }
            None => {
                if let Some(o) = &self.observer {
                    o.miss();
                }
                let capacity = if self.retains() { size_class(len) } else { len };
                let mut buf = Vec::with_capacity(capacity);
                buf.resize(len, 0.0);
                buf
            }
        }
    }

    /// Returns `buf` to the pool, or frees it when it does not fit the
    /// bounds; frees the smallest held buffers until the bounds hold.
    pub fn give_back(&self, buf: Vec<f32>) {
        let bytes = buf.capacity() * F32;
        if bytes == 0 || !self.retains() || bytes > self.limits.max_bytes {
            return;
        }
        let mut freed = Vec::new();
        let (bytes_delta, buffers_delta) = {
            let mut state = self.lock();
            state.free.push(buf);
            state.stats.bytes += bytes;
            state.stats.buffers += 1;
            let (mut db, mut dn) = (bytes as i64, 1i64);
            while state.stats.buffers > self.limits.max_buffers
                || state.stats.bytes > self.limits.max_bytes
            {
                let Some(i) = state
                    .free
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| b.capacity())
                    .map(|(i, _)| i)
                else {
                    break;
                };
                let evicted = state.free.swap_remove(i);
                let b = evicted.capacity() * F32;
                state.stats.bytes -= b;
                state.stats.buffers -= 1;
                db -= b as i64;
                dn -= 1;
                freed.push(evicted);
            }
            (db, dn)
        };
        // Freed outside the lock.
        drop(freed);
        if let Some(o) = &self.observer {
            if bytes_delta != 0 || buffers_delta != 0 {
                o.held(bytes_delta, buffers_delta);
            }
        }
    }

    /// Frees every held buffer.
    pub fn clear(&self) {
        let (free, bytes, buffers) = {
            let mut state = self.lock();
            let free = std::mem::take(&mut state.free);
            let (bytes, buffers) = (state.stats.bytes, state.stats.buffers);
            state.stats.bytes = 0;
            state.stats.buffers = 0;
            (free, bytes, buffers)
        };
        drop(free);
        if let Some(o) = &self.observer {
            if buffers > 0 {
                o.held(-(bytes as i64), -(buffers as i64));
            }
        }
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Rounds `len` up to a size class: a multiple of 1/8 to 1/16 of its power
/// of two, so at most 12.5% is wasted.
fn size_class(len: usize) -> usize {
    if len <= 64 {
        return len.max(1);
    }
    let shift = (usize::BITS - len.leading_zeros()).saturating_sub(4);
    let step = 1usize << shift;
    len.div_ceil(step).saturating_mul(step)
}

/// A buffer borrowed from a [`BufferPool`], returned to it on drop. Derefs
/// to the `Vec<f32>`; swapping the vectors of two buffers of one pool is
/// fine, each returns what it holds.
pub struct PooledBuffer<'a> {
    pool: &'a BufferPool,
    buf: Vec<f32>,
}

impl fmt::Debug for PooledBuffer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuffer")
            .field("len", &self.buf.len())
            .field("capacity", &self.buf.capacity())
            .finish()
    }
}

impl PooledBuffer<'_> {
    /// The vector, no longer returned on drop.
    pub fn into_vec(mut self) -> Vec<f32> {
        std::mem::take(&mut self.buf)
    }
}

impl Deref for PooledBuffer<'_> {
    type Target = Vec<f32>;

    fn deref(&self) -> &Vec<f32> {
        &self.buf
    }
}

impl DerefMut for PooledBuffer<'_> {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        &mut self.buf
    }
}

impl Drop for PooledBuffer<'_> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.pool.give_back(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    #[derive(Default)]
    struct Counts {
        hits: AtomicI64,
        misses: AtomicI64,
        bytes: AtomicI64,
        buffers: AtomicI64,
    }

    impl PoolObserver for Counts {
        fn hit(&self) {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        fn miss(&self) {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        fn held(&self, bytes: i64, buffers: i64) {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.buffers.fetch_add(buffers, Ordering::Relaxed);
        }
    }

    fn observed(limits: PoolLimits) -> (BufferPool, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        (BufferPool::with_observer(limits, counts.clone()), counts)
    }

    fn agree(pool: &BufferPool, c: &Counts) {
        let s = pool.stats();
        assert_eq!(s.hits as i64, c.hits.load(Ordering::Relaxed));
        assert_eq!(s.misses as i64, c.misses.load(Ordering::Relaxed));
        assert_eq!(s.bytes as i64, c.bytes.load(Ordering::Relaxed));
        assert_eq!(s.buffers as i64, c.buffers.load(Ordering::Relaxed));
    }

    #[test]
    fn buffers_are_reused_best_fit() {
        let (pool, counts) = observed(PoolLimits::default());
        {
            let a = pool.take(1000);
            let b = pool.take(3000);
            assert_eq!((a.len(), b.len()), (1000, 3000));
        }
        let s = pool.stats();
        assert_eq!((s.hits, s.misses, s.buffers), (0, 2, 2));
        {
            // Best fit: 900 takes the 1000-class buffer, 2500 the other.
            let a = pool.take(900);
            let b = pool.take(2500);
            assert!(a.capacity() < 2000 && b.capacity() >= 2500);
            assert_eq!((a.len(), b.len()), (900, 2500));
            // Nothing left for a third.
            let _c = pool.take(10);
        }
        let s = pool.stats();
        assert_eq!((s.hits, s.misses, s.buffers), (2, 3, 3));
        agree(&pool, &counts);
        drop(pool);
        assert_eq!(counts.bytes.load(Ordering::Relaxed), 0);
        assert_eq!(counts.buffers.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn bounds_hold_and_smallest_go_first() {
        let limits = PoolLimits {
            max_buffers: 2,
            max_bytes: 100_000,
        };
        let (pool, counts) = observed(limits);
        let bufs: Vec<_> = [100, 5_000, 10_000]
            .into_iter()
            .map(|n| pool.take_vec(n))
            .collect();
        for b in bufs {
            pool.give_back(b);
        }
        let s = pool.stats();
        assert_eq!(s.buffers, 2);
        assert!(s.bytes <= limits.max_bytes);
        // The 100-element one was evicted: a small request takes the 5000.
        assert!(pool.take(10).capacity() >= 5_000);
        // Too large for the pool: freed at once.
        pool.give_back(vec![0.0; 30_000]);
        assert!(pool.stats().bytes <= limits.max_bytes);
        agree(&pool, &counts);
    }

    #[test]
    fn swapped_and_detached_buffers_return() {
        let pool = BufferPool::default();
        {
            let mut a = pool.take(10);
            let mut b = pool.take(10);
            std::mem::swap(&mut *a, &mut *b);
            let v = pool.take(20).into_vec();
            pool.give_back(v);
        }
        assert_eq!(pool.stats().buffers, 3);
        pool.clear();
        assert_eq!(
            pool.stats(),
            PoolStats {
                hits: 0,
                misses: 3,
                bytes: 0,
                buffers: 0
            }
        );
    }

    #[test]
    fn a_pool_without_room_keeps_nothing() {
        let pool = BufferPool::new(PoolLimits::NONE);
        drop(pool.take(1000));
        assert_eq!(pool.stats().buffers, 0);
        assert_eq!(pool.take(5).capacity(), 5);
    }

    #[test]
    fn size_classes_waste_at_most_an_eighth() {
        for n in (1..100_000).step_by(37) {
            let c = size_class(n);
            assert!(c >= n && (c - n) * 8 <= n, "{n} -> {c}");
        }
    }
}
