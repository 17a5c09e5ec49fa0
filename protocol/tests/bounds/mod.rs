//! Decoding allocates in proportion to the frame, not to what the frame claims.
//!
//! A counting global allocator (this test binary only) records, per thread, the bytes live
//! at the peak of each decode. Hostile frames of a few MB each aim at one way a decoder
//! could amplify: many tiny elements of a large type, a length prefix with nothing behind
//! it, varint integers that widen in memory.

#![allow(unsafe_code)] // the counting allocator: `GlobalAlloc` is an unsafe trait

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use crank_protocol::codec::{self, DEFAULT_MAX_FRAME};
use crank_protocol::*;

/// The system allocator, counting live bytes and their peak for the current thread.
struct Counting;

thread_local! {
    // `const` thread-locals need no lazy initialisation, so the allocator may touch them.
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn add(n: usize) {
    // `try_with`: a thread being torn down may still allocate.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(n);
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn sub(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

// SAFETY: every call forwards to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the old and the new block both live for a moment: a copy may need both.
        add(new_size);
        sub(layout.size());
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Decodes `frame` and returns the peak bytes allocated during the decode, above what was
/// live before it.
fn peak_of_decode<T: serde::de::DeserializeOwned + serde::Serialize>(frame: &[u8]) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let decoded = codec::decode::<T>(frame, DEFAULT_MAX_FRAME);
    let peak = PEAK.with(Cell::get).saturating_sub(base);
    drop(decoded);
    peak
}

const FEW_MB: usize = 4 * 1024 * 1024;

fn award(inputs: Vec<NamedTensor>) -> Request {
    let who = Identity::from_secret([3; 32]);
    let body = Award {
        task_id: TaskId([1; 32]),
        requester: who.node_id(),
        worker: NodeId([2; 32]),
        price_stroops: 1,
        model: ModelId([4; 32]),
        model_bytes: 1,
        inputs,
        input_hash: ContentHash([5; 32]),
        nonce: [6; 16],
        payer: String::new(),
        deadline: 1,
    };
    Request::Award(Signed::sign(body, &who).unwrap())
}

fn empty_tensor() -> NamedTensor {
    NamedTensor {
        name: String::new(),
        tensor: Tensor {
            shape: vec![],
            data: TensorData::U8(vec![]),
        },
    }
}

/// Frames that aim at amplification, each a few MB, with a name.
fn hostile_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // Many empty tensors: 4 bytes each on the wire, ~80 bytes each in memory.
    out.push((
        "award with 1M empty tensors",
        codec::encode(&award(vec![empty_tensor(); FEW_MB / 4])).unwrap(),
    ));
    // One tensor of zeros as i64 varints: 1 byte on the wire, 8 in memory.
    out.push((
        "award with an i64 tensor of 4M zeros",
        codec::encode(&award(vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor {
                shape: vec![FEW_MB as u64],
                data: TensorData::I64(vec![0; FEW_MB]),
            },
        }]))
        .unwrap(),
    ));
    // Many empty strings: 1 byte on the wire, 24 in memory.
    let who = Identity::from_secret([7; 32]);
    let advert = CapabilityAdvert {
        node: who.node_id(),
        seq: 1,
        issued_at: 1,
        expires_at: 2,
        agent: String::new(),
        hardware: Hardware {
            cpu_model: String::new(),
            cores: 1,
            ram_mib: 1,
            arch: String::new(),
            os: String::new(),
            gpus: vec![],
        },
        power: PowerInfo {
            external_power: None,
            has_battery: false,
            battery_percent: None,
            busy_milliwatts: 0,
        },
        gate: GateInfo {
            policy: RunPolicy::Always,
            open: true,
            reason: None,
        },
        models: vec![],
        unservable: Vec::new(),
        pricing: Pricing {
            per_task_stroops: 0,
            per_second_stroops: 0,
        },
        payout: String::new(),
        trust: TrustSummary::default(),
        bench: vec![],
        capacity: Capacity {
            workers: 1,
            queue_slots: 1,
            queued: 0,
        },
        addrs: vec![String::new(); FEW_MB],
    };
    out.push((
        "advert response with 4M empty addresses",
        codec::encode(&Response::Advert(Box::new(
            Signed::sign(advert.clone(), &who).unwrap(),
        )))
        .unwrap(),
    ));
    // Many empty GPU entries: 3 bytes on the wire, 72 in memory.
    let gpus = CapabilityAdvert {
        addrs: vec![],
        hardware: Hardware {
            gpus: vec![
                GpuAdapter {
                    name: String::new(),
                    backend: String::new(),
                    kind: String::new(),
                };
                FEW_MB / 3
            ],
            ..advert.hardware.clone()
        },
        ..advert
    };
    out.push((
        "advert response with 1.4M empty GPU entries",
        codec::encode(&Response::Advert(Box::new(
            Signed::sign(gpus, &who).unwrap(),
        )))
        .unwrap(),
    ));
    // Many paid receipts with an empty account: 66 bytes on the wire, 96 in memory.
    let notice = SettlementNotice {
        payer_node: who.node_id(),
        payer_account: String::new(),
        tx_hash: [8; 32],
        receipts: vec![
            PaidReceipt {
                payout: String::new(),
                task_id: TaskId([9; 32]),
                worker: NodeId([10; 32]),
                amount_stroops: 0,
            };
            FEW_MB / 66
        ],
    };
    out.push((
        "settlement notice with 63k receipts",
        codec::encode(&Request::Settlement(Signed::sign(notice, &who).unwrap())).unwrap(),
    ));
    // A model chunk of plain bytes.
    out.push((
        "model chunk of 4 MB",
        codec::encode(&Response::ModelChunk(ModelChunk {
            model: ModelId([1; 32]),
            total_len: FEW_MB as u64,
            offset: 0,
            bytes: vec![0xa5; FEW_MB],
        }))
        .unwrap(),
    ));
    out
}

/// Decodes `frame` as whichever top-level type it was made from.
fn peak(name: &str, frame: &[u8]) -> usize {
    if name.contains("response") || name.contains("chunk") {
        peak_of_decode::<Response>(frame)
    } else {
        peak_of_decode::<Request>(frame)
    }
}

/// A frame whose input list claims `u32::MAX` tensors and holds a million empty ones.
fn lying_length_frame() -> Vec<u8> {
    let mut frame = codec::encode(&award(vec![])).unwrap();
    // Award: version, variant 1, task id, requester, worker, price, model, model size, then
    // the input count (an empty list: one byte, 0).
    let at = 1 + 1 + 32 + 32 + 32 + 1 + 32 + 1;
    assert_eq!(frame[at], 0);
    // The claimed count, then zeros: empty tensors (4 bytes each) for the rest of the frame.
    frame.truncate(at);
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    frame.resize(FEW_MB, 0);
    frame
}

#[test]
fn decoding_allocates_a_small_multiple_of_the_frame() {
    let mut frames = hostile_frames();
    frames.push(("award claiming 4G tensors", lying_length_frame()));
    let mut report = Vec::new();
    let mut over = Vec::new();
    for (name, frame) in frames {
        let bytes = peak(name, &frame);
        let ratio = bytes as f64 / frame.len() as f64;
        report.push(format!(
            "{name}: frame {} B, peak {bytes} B ({ratio:.2}x)",
            frame.len()
        ));
        // A 1-byte varint becomes an 8-byte i64 in memory: a tensor of zeros takes 8x its
        // frame whoever sends it. Everything else stays within twice the frame.
        let bound = if name.contains("i64") { 8 } else { 2 };
        if bytes > bound * frame.len() {
            over.push(format!("{name}: {ratio:.2}x > {bound}x"));
        }
    }
    println!("{}", report.join("\n"));
    assert!(over.is_empty(), "{over:?}\n{}", report.join("\n"));
}
