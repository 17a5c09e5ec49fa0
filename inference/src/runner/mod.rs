//! Isolated model execution: untrusted ONNX models run in a separate runner process, the
//! node's own binary started in a hidden mode, so that a hostile model can crash, exhaust
//! or stall only that process.
//!
//! # How it fits
//!
//! Each engine worker thread owns one long-lived runner child ([`process::Runner`]). The
//! worker sends requests on the child's stdin and reads replies on its stdout, as
//! length-prefixed postcard frames with size limits ([`wire`]). The runner keeps loaded plans
//! by model id; the parent sends a model's bytes only when the runner asks for them. The
//! batching probe and every allocation a model drives happen in the runner.
//!
//! At start, before reading any model, the runner confines itself ([`sandbox`]): an
//! address-space limit, a CPU-time backstop, no file writes, few descriptors, no new
//! processes, no core dumps, and on Linux a seccomp allow-list (no `open`, `socket`,
//! `execve`…). The parent enforces the wall-clock limit: when a job runs past it (or is
//! cancelled, or the engine shuts down) the child is killed mid-operator. A child that dies
//! fails only the batch it was running, with a reason ("the model exhausted the runner's
//! memory limit of N MiB", "runner crashed: signal …"), and the next job starts a fresh one.
//!
//! The GPU path stays in-process: a device context cannot be shared across processes.
//!
//! # Entry point
//!
//! The binary dispatches `crank-node __runner` ([`RUNNER_ARG`]) to [`serve`] before it
//! parses its command line; nothing else in the process runs first.

// Sizes here come from untrusted models and inputs: every product and sum is checked.

pub(crate) mod process;
mod sandbox;
mod serve;
pub(crate) mod wire;

pub use wire::SandboxReport;

/// The hidden first argument that starts the binary as a model runner.
pub const RUNNER_ARG: &str = "__runner";

/// Runs this process as a model runner, serving its parent over stdin and stdout until the
/// parent closes stdin. Call it first thing in `main` when the first argument is
/// [`RUNNER_ARG`], before any thread, logger or runtime is started.
pub fn serve() -> std::process::ExitCode {
    serve::serve()
}

/// The runner executable engines use when their config names none.
static DEFAULT_EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Registers this process's own executable as the runner for every engine whose config
/// names none ([`crate::EngineConfig::runner_exe`]). The node's `main` calls it: only a
/// binary that dispatches [`RUNNER_ARG`] to [`serve`] may, which is why a library (or a
/// test harness) that never calls it keeps running models in-process. Returns false when
/// the executable's path cannot be found or one was registered already.
pub fn use_this_binary() -> bool {
    std::env::current_exe()
        .ok()
        .is_some_and(|exe| DEFAULT_EXE.set(exe).is_ok())
}

/// The registered runner executable, if any.
pub(crate) fn default_exe() -> Option<std::path::PathBuf> {
    DEFAULT_EXE.get().cloned()
}

/// Whether this process was started as a model runner (its first argument is
/// [`RUNNER_ARG`]).
pub fn is_runner_invocation() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == RUNNER_ARG)
}
