//! Hardware summary for the advert: CPU, cores, memory, architecture, OS, and the GPUs the
//! GPU runner found (it probes them itself; this module only files them).

use crank_protocol::messages::{GpuAdapter, Hardware};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, System};
use tracing::warn;

/// Probes the machine. It never fails: where sysinfo cannot read something the field falls
/// back to what the standard library knows (cores, architecture, OS family) or to
/// `"unknown"`, because a node with a partial summary can still work.
pub fn probe_hardware(gpus: Vec<GpuAdapter>) -> Hardware {
    let fallback_cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (cpu_model, cores, ram_mib) = match System::new() {
        Ok(mut sys) => {
            sys.refresh_cpu_list(CpuRefreshKind::nothing());
            sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
            let brand = sys
                .cpus()
                .iter()
                .map(|c| c.brand().trim())
                .find(|b| !b.is_empty())
                .or_else(|| {
                    sys.cpus()
                        .iter()
                        .map(|c| c.vendor_id().trim())
                        .find(|v| !v.is_empty())
                })
                .unwrap_or("unknown")
                .to_owned();
            let cores = match sys.cpus().len() {
                0 => fallback_cores,
                n => n,
            };
            (brand, cores, sys.total_memory() / (1024 * 1024))
        }
        Err(e) => {
            warn!(error = %e, "sysinfo cannot read this system; hardware summary is partial");
            ("unknown".to_owned(), fallback_cores, 0)
        }
    };
    let os = System::long_os_version()
        .or_else(|_| System::name())
        .unwrap_or_else(|_| std::env::consts::OS.to_owned());
    Hardware {
        cpu_model,
        cores: u16::try_from(cores).unwrap_or(u16::MAX),
        ram_mib,
        arch: System::cpu_arch(),
        os,
        gpus,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_this_machine() {
        let gpu = GpuAdapter {
            name: "Test GPU".into(),
            backend: "vulkan".into(),
            kind: "discrete".into(),
        };
        let hw = probe_hardware(vec![gpu.clone()]);
        assert!(!hw.cpu_model.is_empty());
        // Affinity and cgroups can only lower what the standard library sees.
        let visible = std::thread::available_parallelism().map_or(1, usize::from);
        assert!(usize::from(hw.cores) >= visible, "{} < {visible}", hw.cores);
        assert!(hw.ram_mib > 0);
        assert_eq!(hw.arch, std::env::consts::ARCH);
        assert!(!hw.os.is_empty());
        assert_eq!(hw.gpus, vec![gpu]);
    }
}
