//! The parent's side: one long-lived runner child per engine worker, restarted after a
//! crash, a kill or a spent CPU budget.
//!
//! Replies are read on a small thread per child so that the worker can wait with a timeout
//! and, between short waits, check for cancellation, deadlines and shutdown; when one says
//! stop, the child is killed (one huge operator cannot hold the worker) and a fresh one is
//! started for the next job.

use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crank_protocol::{ModelId, NamedTensor};
use tracing::{debug, warn};

use super::RUNNER_ARG;
use super::wire::{
    Backend, FrameError, Ran, Reply, RequestRef, SandboxReport, Setup, read_frame, write_frame,
};
use crate::engine::{RunError, Stop};
use crate::error::InferenceError;
use crate::model::ModelInfo;
use crate::store::ModelStore;

/// How often a waiting worker checks whether to stop the run.
const POLL: Duration = Duration::from_millis(5);
/// How long a new runner may take to start and confine itself.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Reply frames beyond the runner's own memory limit are not honest.
const REPLY_SLACK: u64 = 1 << 20;

/// A runner child and the parent's view of it.
pub(crate) struct Runner {
    exe: PathBuf,
    setup: Setup,
    live: Option<Live>,
}

struct Live {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    replies: Receiver<Result<Reply, FrameError>>,
    reader: Option<JoinHandle<()>>,
    report: SandboxReport,
}

impl Drop for Live {
    fn drop(&mut self) {
        // Killing an exited child is harmless; waiting reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader is not joined: it may be blocked handing over a reply nobody will read,
        // and it ends by itself once the receiver (dropped right after this) is gone.
        drop(self.reader.take());
    }
}

/// How a request ended when it did not get a reply.
enum Broken {
    /// The parent stopped it and killed the runner.
    Stopped(Stop),
    /// The runner died or misbehaved.
    Failed(InferenceError),
}

impl Runner {
    pub fn new(exe: PathBuf, setup: Setup) -> Self {
        Self {
            exe,
            setup,
            live: None,
        }
    }

    /// What the current (or a fresh) runner applied to itself.
    pub fn sandbox(&mut self) -> Result<SandboxReport, InferenceError> {
        Ok(self.live()?.report.clone())
    }

    /// Loads `id` in the runner's `backend` and describes it; the load is stopped at
    /// `deadline`.
    pub fn load(
        &mut self,
        backend: Backend,
        id: &ModelId,
        store: &ModelStore,
        deadline: Instant,
    ) -> Result<ModelInfo, InferenceError> {
        let never = || -> Option<Stop> { None };
        let limit = deadline.saturating_duration_since(Instant::now());
        let reply = self.call(id, store, deadline, &never, |bytes| RequestRef::Load {
            backend,
            model: id.0,
            bytes,
        });
        match reply {
            Ok(Reply::Loaded(r)) => r.map(ModelInfo::from),
            Ok(other) => Err(self.protocol(&other)),
            Err(Broken::Failed(e)) => Err(e),
            Err(Broken::Stopped(_)) => Err(InferenceError::ModelInvalid(format!(
                "loading it took longer than {limit:?}"
            ))),
        }
    }

    /// Runs a batch on `backend`; `check` is asked between short waits whether to stop it.
    pub fn run(
        &mut self,
        backend: Backend,
        id: &ModelId,
        store: &ModelStore,
        jobs: &[&[NamedTensor]],
        cap: Duration,
        check: &dyn Fn() -> Option<Stop>,
    ) -> Result<Ran, RunError> {
        let started = Instant::now();
        let deadline = started.checked_add(cap).unwrap_or(started);
        let max_run_micros = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        let reply = self.call(id, store, deadline, check, |bytes| RequestRef::Run {
            backend,
            model: id.0,
            bytes,
            jobs,
            max_run_micros,
        });
        let ran = match reply {
            Ok(Reply::Ran(r)) => r.map_err(RunError::Failed)?,
            Ok(other) => return Err(RunError::Failed(self.protocol(&other))),
            Err(Broken::Stopped(stop)) => return Err(RunError::Stopped(stop)),
            Err(Broken::Failed(e)) => return Err(RunError::Failed(e)),
        };
        // Retire a runner halfway to its CPU backstop, so the backstop never ends an honest
        // run (each run is killed by the wall clock long before it could use the rest).
        if ran.process_cpu_micros / 1_000_000 >= self.setup.cpu_secs / 2 {
            debug!("runner retired after its CPU budget");
            self.live = None;
        }
        Ok(ran)
    }

    /// Sends a request (again with the model's bytes if the runner asks for them) and
    /// waits for the reply.
    fn call<'a>(
        &mut self,
        id: &ModelId,
        store: &ModelStore,
        deadline: Instant,
        check: &dyn Fn() -> Option<Stop>,
        request: impl for<'b> Fn(Option<&'b [u8]>) -> RequestRef<'a, 'b>,
    ) -> Result<Reply, Broken> {
        self.live().map_err(Broken::Failed)?;
        match self.round_trip(&request(None), deadline, check)? {
            Reply::NeedModel => {
                let bytes = store.read(id).map_err(|e| Broken::Failed(e.into()))?;
                self.round_trip(&request(Some(&bytes)), deadline, check)
            }
            other => Ok(other),
        }
    }

    fn round_trip(
        &mut self,
        request: &RequestRef<'_, '_>,
        deadline: Instant,
        check: &dyn Fn() -> Option<Stop>,
    ) -> Result<Reply, Broken> {
        let live = self.live().map_err(Broken::Failed)?;
        if let Err(e) = write_frame(&mut live.stdin, request) {
            // A runner that died mid-request says why through its exit status.
            return Err(Broken::Failed(
                self.died(&format!("request not delivered: {e}")),
            ));
        }
        loop {
            if let Some(stop) = check() {
                self.kill();
                return Err(Broken::Stopped(stop));
            }
            let now = Instant::now();
            if now >= deadline {
                self.kill();
                return Err(Broken::Stopped(Stop::RunTime));
            }
            let Some(live) = self.live.as_mut() else {
                return Err(Broken::Failed(InferenceError::RunnerCrashed("gone".into())));
            };
            match live
                .replies
                .recv_timeout(POLL.min(deadline.saturating_duration_since(now)))
            {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(FrameError::Closed | FrameError::Io(_)))
                | Err(RecvTimeoutError::Disconnected) => {
                    return Err(Broken::Failed(self.died("closed its output")));
                }
                Ok(Err(e)) => {
                    self.kill();
                    return Err(Broken::Failed(InferenceError::RunnerCrashed(format!(
                        "it sent a bad reply: {e}"
                    ))));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// The live runner, started (and confined) if there is none.
    fn live(&mut self) -> Result<&mut Live, InferenceError> {
        if self.live.is_none() {
            self.live = Some(self.start()?);
        }
        self.live
            .as_mut()
            .ok_or_else(|| InferenceError::RunnerCrashed("not started".into()))
    }

    fn start(&self) -> Result<Live, InferenceError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            InferenceError::RunnerUnavailable(format!("{what} ({}): {e}", self.exe.display()))
        };
        let mut child = Command::new(&self.exe)
            .arg(RUNNER_ARG)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| fail("cannot start the model runner", &e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(InferenceError::RunnerUnavailable(
                "runner pipes missing".into(),
            ));
        };
        let limit = self.setup.memory_bytes.saturating_add(REPLY_SLACK);
        let (tx, rx) = sync_channel(1);
        let reader = std::thread::Builder::new()
            .name("crank-runner-reader".into())
            .spawn(move || {
                let mut out = BufReader::new(stdout);
                loop {
                    let frame = read_frame::<Reply>(&mut out, limit);
                    let last = frame.is_err();
                    if tx.send(frame).is_err() || last {
                        return;
                    }
                }
            });
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail("cannot start the runner's reader thread", &e));
            }
        };
        let mut live = Live {
            child,
            stdin: BufWriter::new(stdin),
            replies: rx,
            reader: Some(reader),
            report: SandboxReport::default(),
        };
        write_frame(&mut live.stdin, &self.setup).map_err(|e| fail("runner setup", &e))?;
        match live.replies.recv_timeout(START_TIMEOUT) {
            Ok(Ok(Reply::Ready(report))) => {
                if !report.notes.is_empty() {
                    warn!(notes = ?report.notes, "model runner sandbox is incomplete");
                }
                live.report = report;
                debug!(pid = live.child.id(), "model runner started");
                Ok(live)
            }
            Ok(Ok(_)) => Err(fail("runner handshake", &"unexpected reply")),
            Ok(Err(e)) => Err(fail("runner handshake", &e)),
            Err(e) => Err(fail("runner handshake", &e)),
        }
    }

    /// Kills the runner; the next request starts a fresh one.
    pub fn kill(&mut self) {
        self.live = None;
    }

    /// Reaps a runner that stopped answering and says why it died.
    fn died(&mut self, what: &str) -> InferenceError {
        let Some(mut live) = self.live.take() else {
            return InferenceError::RunnerCrashed(what.to_string());
        };
        // It closed its output: it is exiting or exited. Give it a moment, then make sure.
        let now = Instant::now();
        let until = now.checked_add(Duration::from_secs(2)).unwrap_or(now);
        let status = loop {
            match live.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < until => std::thread::sleep(POLL),
                _ => break None,
            }
        };
        let limit_mib = self.setup.memory_bytes / (1024 * 1024);
        let e = match status {
            Some(s) => crash_error(s, limit_mib),
            None => InferenceError::RunnerCrashed(format!("it {what} but did not exit")),
        };
        warn!(error = %e, "model runner died; a fresh one starts with the next job");
        e
    }

    fn protocol(&mut self, reply: &Reply) -> InferenceError {
        self.kill();
        InferenceError::RunnerCrashed(format!("unexpected reply {reply:?}"))
    }
}

/// What a runner's exit status says about the model it was running.
fn crash_error(status: ExitStatus, limit_mib: u64) -> InferenceError {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            // An allocation refused under RLIMIT_AS aborts; the kernel's OOM killer sends
            // SIGKILL. Either way the model asked for more memory than the runner may use.
            return match sig {
                6 | 9 => InferenceError::MemoryExhausted { limit_mib },
                24 => InferenceError::RunnerCrashed("it ran out of CPU time (SIGXCPU)".into()),
                _ => InferenceError::RunnerCrashed(format!("signal {sig} ({})", signal_name(sig))),
            };
        }
    }
    InferenceError::RunnerCrashed(format!("it exited with {status}"))
}

#[cfg(unix)]
fn signal_name(sig: i32) -> &'static str {
    match sig {
        4 => "SIGILL",
        5 => "SIGTRAP",
        7 => "SIGBUS",
        8 => "SIGFPE",
        11 => "SIGSEGV",
        31 => "SIGSYS",
        _ => "signal",
    }
}
