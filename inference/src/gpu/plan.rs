//! A lowered program bound to device buffers, ready to run again and again.
//!
//! Building a plan assigns every value a buffer: inputs get their own, constants use the
//! model's uploaded weights, and intermediate values share a few pooled buffers (a value's
//! buffer is reused once its last reader has run). Parameter blocks and bind groups are made
//! once. A run then only writes the inputs, records the dispatches into one command buffer,
//! copies the outputs (and the error flag) to a mappable buffer and reads them back.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crank_protocol::{Tensor as WireTensor, TensorData};
use wgpu::util::DeviceExt;

use super::Shared;
use super::error::GpuError;
use super::lower::{Meta, PARAM_WORDS, Program};
use super::onnx::{DType, Graph, Source, ValueId};
use super::pool::{PooledBuffer, size_class};

/// Where a value's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    /// The plan's buffer for graph input `n`.
    Input(usize),
    /// The model's weight buffer for a constant value.
    Weight(ValueId),
    /// Intermediate slot `n`.
    Slot(usize),
}

/// One graph output to read back.
struct Readback {
    home: Home,
    meta: Meta,
    /// Offset in the staging buffer, bytes.
    offset: u64,
    /// Size, bytes (checked against the device's binding limit).
    bytes: u64,
}

/// One recorded dispatch.
struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
}

/// A program bound to buffers.
pub(crate) struct Plan {
    inputs: Vec<(PooledBuffer, Meta)>,
    /// Intermediate buffers; they return to the pool with the plan.
    slots: Vec<PooledBuffer>,
    dispatches: Vec<Dispatch>,
    outputs: Vec<Readback>,
    error_flag: Option<wgpu::Buffer>,
    staging: wgpu::Buffer,
    staging_bytes: u64,
    /// A run was abandoned while the device still used this plan; it must not run again.
    pub broken: bool,
}

/// Bytes reserved at the start of the staging buffer for the error flag (8 keeps the
/// outputs after it aligned for int64).
const FLAG_BYTES: u64 = 8;

impl Plan {
    /// Binds `program` (lowered from `graph`) to buffers on the device.
    pub fn build(
        rt: &Shared,
        graph: &Graph,
        program: &Program,
        weights: &HashMap<ValueId, wgpu::Buffer>,
    ) -> Result<Self, GpuError> {
        let limits = &rt.limits;
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let name = |id: ValueId| value_name(graph, id);
        let checked = |id: ValueId| checked_meta(graph, program, id, max_binding);

        // Input buffers.
        let mut homes: HashMap<ValueId, Home> = HashMap::new();
        let mut inputs = Vec::with_capacity(graph.input_values.len());
        for (i, id) in graph.input_values.iter().enumerate() {
            let (m, bytes) = checked(*id)?;
            inputs.push((rt.pool.take(bytes), m.clone()));
            homes.insert(*id, Home::Input(i));
        }
        for (id, v) in graph.values.iter().enumerate() {
            if matches!(v.source, Source::Const(_)) && weights.contains_key(&id) {
                homes.insert(id, Home::Weight(id));
            }
        }

        // Liveness of intermediate values: the last step reading each.
        let mut last_read: HashMap<ValueId, usize> = HashMap::new();
        for (s, step) in program.steps.iter().enumerate() {
            for r in &step.reads {
                last_read.insert(*r, s);
            }
        }
        let keep: Vec<ValueId> = graph
            .outputs
            .iter()
            .filter_map(|(id, _)| program.root.get(*id).copied())
            .collect();

        // Slot assignment: reuse a free slot of sufficient class, else open a new one.
        let mut slot_class: Vec<u64> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        for (s, step) in program.steps.iter().enumerate() {
            let class = size_class(checked(step.write)?.1);
            let pick = free
                .iter()
                .enumerate()
                .filter(|(_, slot)| slot_class[**slot] >= class)
                .min_by_key(|(_, slot)| slot_class[**slot])
                .map(|(i, _)| i);
            let slot = match pick {
                Some(i) => free.swap_remove(i),
                None => {
                    let new = slot_class.len();
                    slot_class.push(class);
                    new
                }
            };
            homes.insert(step.write, Home::Slot(slot));
            // Values whose last reader is this step (or that nobody reads) free their slot,
            // after the output took its own so a kernel never reads and writes one buffer.
            let mut done: Vec<ValueId> = step
                .reads
                .iter()
                .copied()
                .filter(|r| last_read.get(r) == Some(&s))
                .collect();
            if !last_read.contains_key(&step.write) {
                done.push(step.write);
            }
            done.sort_unstable();
            done.dedup();
            for v in done {
                if keep.contains(&v) {
                    continue;
                }
                if let Some(Home::Slot(sl)) = homes.get(&v)
                    && !free.contains(sl)
                {
                    free.push(*sl);
                }
            }
        }
        let slots: Vec<PooledBuffer> = slot_class.iter().map(|c| rt.pool.take(*c)).collect();

        let home_of = |id: ValueId| -> Result<Home, GpuError> {
            homes.get(&id).copied().ok_or_else(|| {
                GpuError::Backend(format!("value `{}` has no buffer in the plan", name(id)))
            })
        };

        let uses_flag = program.steps.iter().any(|s| s.kernel.uses_error_flag());
        let error_flag = uses_flag.then(|| {
            rt.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("crank error flag"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        });

        let max_groups = limits.max_compute_workgroups_per_dimension;
        let mut dispatches = Vec::with_capacity(program.steps.len());
        for step in &program.steps {
            if step.groups.iter().any(|g| *g > max_groups) {
                let node = graph.nodes.get(step.node).map_or("?", |n| n.name.as_str());
                return Err(GpuError::TooLarge {
                    value: node.to_string(),
                    bytes: checked(step.write)?.1,
                    limit: max_binding,
                });
            }
            let compiled = rt.kernels.get(step.kernel)?;
            let mut words = [0u32; PARAM_WORDS];
            for (w, p) in words.iter_mut().zip(&step.params) {
                *w = *p;
            }
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let params = rt
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("crank params"),
                    contents: &bytes,
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let mut bound: Vec<(&wgpu::Buffer, u64)> = Vec::new();
            for r in &step.reads {
                bound.push((
                    buffer_in(home_of(*r)?, &inputs, weights, &slots)?,
                    checked(*r)?.1,
                ));
            }
            bound.push((
                buffer_in(home_of(step.write)?, &inputs, weights, &slots)?,
                checked(step.write)?.1,
            ));
            if step.kernel.uses_error_flag()
                && let Some(flag) = &error_flag
            {
                bound.push((flag, 4));
            }
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: params.as_entire_binding(),
            }];
            // Binding 0 is the parameter block; the buffers follow from 1.
            for (binding, (buf, size)) in (1u32..).zip(&bound) {
                entries.push(wgpu::BindGroupEntry {
                    binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: buf,
                        offset: 0,
                        size: NonZeroU64::new(*size),
                    }),
                });
            }
            let bind_group = rt.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("crank step"),
                layout: &compiled.layout,
                entries: &entries,
            });
            dispatches.push(Dispatch {
                pipeline: compiled.pipeline.clone(),
                bind_group,
                groups: step.groups,
            });
        }

        let mut offset = FLAG_BYTES;
        let mut outputs = Vec::with_capacity(graph.outputs.len());
        for (id, _) in &graph.outputs {
            let root = program.root.get(*id).copied().unwrap_or(*id);
            let (m, bytes) = checked(*id)?;
            outputs.push(Readback {
                home: home_of(root)?,
                meta: m.clone(),
                offset,
                bytes,
            });
            // Each output starts 8-aligned (int64); the sum of a few outputs each under
            // the binding limit fits in u64, but a checked sum costs nothing.
            offset = bytes
                .checked_next_multiple_of(8)
                .and_then(|b| offset.checked_add(b))
                .ok_or_else(|| GpuError::TooLarge {
                    value: name(*id).to_string(),
                    bytes,
                    limit: max_binding,
                })?;
        }
        let staging = rt.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("crank readback"),
            size: offset,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Self {
            inputs,
            slots,
            dispatches,
            outputs,
            error_flag,
            staging,
            staging_bytes: offset,
            broken: false,
        })
    }

    /// Runs once. `inputs` are in graph order and already checked against the plan's
    /// shapes. Waits at most until `deadline`, and gives up early when `stop` says so.
    pub fn run(
        &mut self,
        rt: &Shared,
        weights: &HashMap<ValueId, wgpu::Buffer>,
        inputs: &[&WireTensor],
        deadline: Instant,
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<WireTensor>, GpuError> {
        for ((buf, meta), t) in self.inputs.iter().zip(inputs) {
            let bytes = to_bytes(&t.data, meta.dtype)?;
            rt.queue.write_buffer(buf.buffer(), 0, &bytes);
        }
        if let Some(flag) = &self.error_flag {
            rt.queue.write_buffer(flag, 0, &[0u8; 4]);
        }
        let mut encoder = rt
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("crank run"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("crank kernels"),
                timestamp_writes: None,
            });
            for d in &self.dispatches {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, Some(&d.bind_group), &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        if let Some(flag) = &self.error_flag {
            encoder.copy_buffer_to_buffer(flag, 0, &self.staging, 0, 4);
        }
        for out in &self.outputs {
            let src = buffer_in(out.home, &self.inputs, weights, &self.slots)?;
            encoder.copy_buffer_to_buffer(src, 0, &self.staging, out.offset, out.bytes);
        }
        let index = rt.queue.submit([encoder.finish()]);
        let (tx, rx) = mpsc::sync_channel(1);
        self.staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| {
                // The receiver may have given up; then nobody needs the answer.
                let _ = tx.try_send(r);
            });
        // Wait in short slices so a cancelled or overdue run is noticed.
        let slice = Duration::from_millis(50);
        loop {
            let now = Instant::now();
            if now >= deadline {
                self.broken = true;
                return Err(GpuError::TimedOut(slice));
            }
            match rt.device.poll(wgpu::PollType::Wait {
                submission_index: Some(index.clone()),
                timeout: Some(slice.min(deadline.saturating_duration_since(now))),
            }) {
                Ok(_) => break,
                Err(wgpu::PollError::Timeout) => {
                    if stop() {
                        self.broken = true;
                        return Err(GpuError::Cancelled);
                    }
                    if rt.is_lost() {
                        self.broken = true;
                        return Err(GpuError::Backend("the device was lost".into()));
                    }
                }
                Err(e) => {
                    self.broken = true;
                    return Err(GpuError::Backend(e.to_string()));
                }
            }
        }
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.broken = true;
                return Err(GpuError::Backend(format!("reading results back: {e}")));
            }
            Err(_) => {
                self.broken = true;
                return Err(GpuError::Backend("results were never mapped".into()));
            }
        }
        let bytes: Vec<u8> = {
            let view = self
                .staging
                .slice(..self.staging_bytes)
                .get_mapped_range()
                .map_err(|e| GpuError::Backend(format!("mapping results: {e}")))?;
            view.to_vec()
        };
        self.staging.unmap();
        if self.error_flag.is_some() {
            let flag = bytes
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_le_bytes);
            if flag != 0 {
                return Err(GpuError::Kernel("an index is out of range".into()));
            }
        }
        self.outputs
            .iter()
            .map(|o| {
                let short = || GpuError::Backend("short readback".into());
                let start = usize::try_from(o.offset).map_err(|_| short())?;
                let end = usize::try_from(o.bytes)
                    .ok()
                    .and_then(|b| start.checked_add(b))
                    .ok_or_else(short)?;
                let raw = bytes.get(start..end).ok_or_else(short)?;
                from_bytes(raw, &o.meta)
            })
            .collect()
    }
}

fn value_name(graph: &Graph, id: ValueId) -> &str {
    graph.values.get(id).map_or("?", |v| v.name.as_str())
}

/// A value's shape and type, checked to fit one buffer binding on this device, with its size
/// in bytes.
fn checked_meta<'p>(
    graph: &Graph,
    program: &'p Program,
    id: ValueId,
    max_binding: u64,
) -> Result<(&'p Meta, u64), GpuError> {
    let m = program
        .meta
        .get(id)
        .and_then(Option::as_ref)
        .ok_or_else(|| GpuError::Backend(format!("value {id} has no shape in the plan")))?;
    let bytes = m.bytes().ok_or_else(|| GpuError::Shape {
        node: value_name(graph, id).to_string(),
        reason: format!("tensor {:?} overflows", m.shape),
    })?;
    if bytes == 0 {
        return Err(GpuError::unsupported(
            "tensor",
            value_name(graph, id),
            format!("empty tensor {:?}", m.shape),
        ));
    }
    if size_class(bytes) > max_binding {
        return Err(GpuError::TooLarge {
            value: value_name(graph, id).to_string(),
            bytes,
            limit: max_binding,
        });
    }
    Ok((m, bytes))
}

/// The buffer behind a home.
fn buffer_in<'a>(
    home: Home,
    inputs: &'a [(PooledBuffer, Meta)],
    weights: &'a HashMap<ValueId, wgpu::Buffer>,
    slots: &'a [PooledBuffer],
) -> Result<&'a wgpu::Buffer, GpuError> {
    match home {
        Home::Input(i) => inputs.get(i).map(|(b, _)| b.buffer()),
        Home::Weight(id) => weights.get(&id),
        Home::Slot(s) => slots.get(s).map(PooledBuffer::buffer),
    }
    .ok_or_else(|| GpuError::Backend("plan refers to a missing buffer".into()))
}

/// Little-endian bytes of a tensor for the GPU (`int64` is already two LE words).
fn to_bytes(data: &TensorData, dtype: DType) -> Result<Vec<u8>, GpuError> {
    match (data, dtype) {
        (TensorData::F32(v), DType::F32) => Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (TensorData::I64(v), DType::I64) => Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (d, t) => Err(GpuError::InputInvalid(format!(
            "{} data for a {} input",
            d.dtype(),
            t.name()
        ))),
    }
}

/// A wire tensor from read-back bytes.
fn from_bytes(raw: &[u8], meta: &Meta) -> Result<WireTensor, GpuError> {
    let shape: Vec<u64> = meta.shape.iter().map(|d| *d as u64).collect();
    let data = match meta.dtype {
        DType::F32 => TensorData::F32(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::I64 => TensorData::I64(
            raw.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    let t = WireTensor { shape, data };
    t.check_shape()
        .map_err(|e| GpuError::Backend(format!("read back a malformed tensor: {e}")))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_both_element_types() {
        let m = Meta {
            shape: vec![2, 2],
            dtype: DType::F32,
        };
        let data = TensorData::F32(vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE]);
        let b = to_bytes(&data, DType::F32).unwrap();
        assert_eq!(from_bytes(&b, &m).unwrap().data, data);
        let m = Meta {
            shape: vec![3],
            dtype: DType::I64,
        };
        let data = TensorData::I64(vec![i64::MIN, -1, 1 << 40]);
        let b = to_bytes(&data, DType::I64).unwrap();
        // int64 is low word then high word, as the kernels read it.
        assert_eq!(&b[8..16], &[0xff; 8]);
        assert_eq!(from_bytes(&b, &m).unwrap().data, data);
        assert!(to_bytes(&TensorData::U8(vec![1]), DType::F32).is_err());
    }
}
