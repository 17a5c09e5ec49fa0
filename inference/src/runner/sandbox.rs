//! The confinement a runner applies to itself before it reads a model: resource limits
//! (`setrlimit`, through rustix's safe wrapper) and, on Linux, a seccomp allow-list.
//!
//! Applied from inside the runner because the only way to run code between `fork` and
//! `exec` in the parent (`Command::pre_exec`) is `unsafe`, which this workspace denies. The
//! runner has read nothing untrusted when it applies them: only the parent's setup frame.

use super::wire::{SandboxReport, Setup};

/// Open descriptors the runner may hold: its three standard streams and a few spare.
const MAX_FILES: u64 = 8;

/// Applies every limit it can and reports which took hold.
pub(crate) fn apply(setup: &Setup) -> SandboxReport {
    let mut report = SandboxReport::default();
    limits(setup, &mut report);
    seccomp(&mut report);
    report
}

#[cfg(unix)]
fn limits(setup: &Setup, report: &mut SandboxReport) {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let set = |resource: Resource, value: u64, notes: &mut Vec<String>| -> bool {
        let limit = Rlimit {
            current: Some(value),
            maximum: Some(value),
        };
        match setrlimit(resource, limit) {
            Ok(()) => true,
            Err(e) => {
                notes.push(format!("{resource:?} limit: {e}"));
                false
            }
        }
    };
    report.memory_limit = set(Resource::As, setup.memory_bytes, &mut report.notes);
    report.cpu_limit = set(Resource::Cpu, setup.cpu_secs, &mut report.notes);
    let fsize = set(Resource::Fsize, 0, &mut report.notes);
    let core = set(Resource::Core, 0, &mut report.notes);
    let nofile = set(Resource::Nofile, MAX_FILES, &mut report.notes);
    // Threads count as processes for RLIMIT_NPROC: the runner's thread pool exists already.
    let nproc = set(Resource::Nproc, 0, &mut report.notes);
    report.file_limits = fsize && core && nofile && nproc;
}

#[cfg(not(unix))]
fn limits(_setup: &Setup, report: &mut SandboxReport) {
    report
        .notes
        .push("resource limits are not available on this platform".into());
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn seccomp(report: &mut SandboxReport) {
    match install_filter() {
        Ok(()) => {
            // Proof that the filter is in force: opening a file must now fail.
            report.seccomp = std::fs::File::open("/dev/null").is_err();
            if !report.seccomp {
                report
                    .notes
                    .push("seccomp installed but /dev/null still opens".into());
            }
        }
        Err(e) => report.notes.push(format!("seccomp: {e}")),
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn seccomp(report: &mut SandboxReport) {
    report
        .notes
        .push("seccomp is not available on this platform".into());
}

/// The allow-list: memory, threads and their synchronisation, time, signals (abort,
/// stack-overflow handling), randomness, and reading and writing the descriptors the runner
/// already holds. No `open`, `socket`, `connect`, `execve`, `fork`, `ptrace` or `kill` of
/// another process: any other call fails with `ENOSYS`.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn install_filter() -> Result<(), seccompiler::Error> {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    let always = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_getrandom,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getrusage,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_membarrier,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_fstat,
        libc::SYS_statx,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        always.iter().map(|&nr| (nr, Vec::new())).collect();
    // abort() signals its own thread; no other target.
    rules.insert(
        libc::SYS_tgkill,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            u64::from(std::process::id()),
        )?])?],
    );
    // New threads only (CLONE_THREAD set), never new processes. clone3 passes its flags in
    // memory the filter cannot read, so it is refused and the C library falls back to clone.
    let thread = u64::try_from(libc::CLONE_THREAD).unwrap_or(0);
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?])?],
    );
    // Reading limits (the C library asks for the stack limit) but never setting them.
    rules.insert(
        libc::SYS_prlimit64,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::Eq,
            0,
        )?])?],
    );
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(u32::try_from(libc::ENOSYS).unwrap_or(38)),
        SeccompAction::Allow,
        arch,
    )?;
    let program: BpfProgram = filter.try_into()?;
    // Every thread, including the matrix-product pool built before the sandbox.
    seccompiler::apply_filter_all_threads(&program)
}
