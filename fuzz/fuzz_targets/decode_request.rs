//! Any bytes decode to a request or an error; a decoded request re-encodes to the same bytes,
//! and checking its signatures and validating it never panics.
#![no_main]

use crank_protocol::codec::{self, DEFAULT_MAX_FRAME};
use crank_protocol::validate::{self, Limits};
use crank_protocol::{NodeId, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = codec::decode::<Request>(data, DEFAULT_MAX_FRAME) {
        let again = codec::encode(&req).expect("a decoded request encodes");
        assert_eq!(again, data, "one frame, one meaning");
        let me = NodeId([0; 32]);
        let limits = Limits::default();
        match &req {
            Request::CallForBids(s) => {
                drop(validate::call_for_bids(s, s.body.issued_at, &limits));
            }
            Request::Award(s) => {
                // Addressed to its own worker, so the checks get past the address.
                let worker = s.body.worker;
                drop(validate::award(s, &worker, 0, &limits));
            }
            Request::Failure(s) => drop(s.verify()),
            Request::Cancel(s) => drop(s.verify()),
            Request::Result(r) => {
                let b = &r.receipt.body;
                drop(validate::task_result(r, &b.requester, &b.worker, &limits));
            }
            Request::Outputs(o) => {
                // Against a receipt that names the same parties and task.
                if let Ok(body) = o.verify() {
                    let receipt = crank_protocol::WorkReceipt {
                        task_id: body.task_id,
                        requester: body.requester,
                        worker: body.worker,
                        model: crank_protocol::ModelId([0; 32]),
                        input_hash: crank_protocol::ContentHash([0; 32]),
                        output_hash: crank_protocol::ContentHash([0; 32]),
                        price_stroops: 1,
                        energy: crank_protocol::Energy {
                            microjoules: 1,
                            method: crank_protocol::EnergyMethod::CpuTimeEstimate,
                        },
                        path: crank_protocol::ExecPath::Cpu,
                        timings: crank_protocol::Timings {
                            accepted_at: 0,
                            started_at: 0,
                            finished_at: 0,
                            run_micros: 0,
                        },
                        pair_seq: 1,
                        cumulative_stroops: 1,
                        payout: String::new(),
                        payer: String::new(),
                    };
                    drop(validate::task_outputs(o, &receipt, &limits));
                }
            }
            Request::Dispute(d) => {
                let worker = d.body.receipt.body.worker;
                drop(validate::dispute(d, &worker));
                drop(validate::dispute(d, &me));
            }
            Request::Settlement(n) => drop(validate::settlement_notice(n, &me)),
            Request::FetchModel(_)
            | Request::GetAdvert
            | Request::GetSettlement { .. }
            | Request::GetReceipt { .. } => {}
        }
    }
});
