//! One pool of storage buffers per device, shared by every plan.
//!
//! Plans take buffers for their inputs and intermediate values when they are built and give
//! them back when they are dropped (a model evicted, a batch size no longer used), so a new
//! plan reuses memory instead of allocating. Buffers are bucketed by size class: powers of
//! two up to 1 MiB, then whole MiB, so a buffer fits many nearby sizes with little waste.
//! The pool keeps at most a configured number of idle bytes; beyond that, returned buffers
//! are freed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Usage of every pooled buffer: bound as storage, written by the host, copied out.
const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// The size class a request of `bytes` is served from. Saturates at `u64::MAX`, which is
/// above every device's binding limit, so an absurd request is refused as too large.
pub(crate) fn size_class(bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let b = bytes.max(256);
    if b <= MIB {
        b.next_power_of_two()
    } else {
        b.checked_next_multiple_of(MIB).unwrap_or(u64::MAX)
    }
}

#[derive(Default)]
struct Idle {
    by_class: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

/// Idle buffers by size class.
pub(crate) struct BufferPool {
    device: wgpu::Device,
    max_idle_bytes: u64,
    idle: Mutex<Idle>,
}

impl BufferPool {
    /// A pool keeping at most `max_idle_bytes` of unused buffers.
    pub fn new(device: wgpu::Device, max_idle_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            device,
            max_idle_bytes,
            idle: Mutex::new(Idle::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        // The map stays consistent across a panic (each operation is one push or pop).
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of at least `bytes`, reused when one is idle.
    pub fn take(self: &Arc<Self>, bytes: u64) -> PooledBuffer {
        let class = size_class(bytes);
        let reused = {
            let mut idle = self.lock();
            let b = idle.by_class.get_mut(&class).and_then(Vec::pop);
            if b.is_some() {
                idle.bytes = idle.bytes.saturating_sub(class);
            }
            b
        };
        let buffer = reused.unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("crank pooled"),
                size: class,
                usage: USAGE,
                mapped_at_creation: false,
            })
        });
        PooledBuffer {
            buffer,
            pool: self.clone(),
        }
    }

    /// Bytes held by idle buffers.
    pub fn idle_bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        let class = buffer.size();
        let mut idle = self.lock();
        // Idle bytes never exceed `max_idle_bytes`, so the sum cannot really saturate.
        let after = idle.bytes.saturating_add(class);
        if after > self.max_idle_bytes {
            // Dropping the handle frees the memory once in-flight work no longer uses it.
            return;
        }
        idle.bytes = after;
        idle.by_class.entry(class).or_default().push(buffer);
    }
}

/// A buffer on loan from the pool; returned when dropped.
pub(crate) struct PooledBuffer {
    buffer: wgpu::Buffer,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    /// The buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        // wgpu buffers are reference-counted handles; the pool keeps this one alive.
        self.pool.give_back(self.buffer.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(0), 256);
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(257), 512);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class((5 << 20) + 7), 6 << 20);
        for b in [3u64, 1000, 70_000, 3_000_000, 100_000_000] {
            let c = size_class(b);
            assert!(c >= b);
            assert!(c - b < (1 << 20).max(b), "{b} -> {c}");
        }
    }
}
