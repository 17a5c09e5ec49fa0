//! Which adapter to run on, and which adapters to advertise.
//!
//! Software rasterisers that present themselves as Vulkan, Metal or D3D devices (Mesa's
//! lavapipe/llvmpipe and softpipe, SwiftShader, Microsoft's WARP) are CPU-emulated: they are
//! never advertised as a GPU, because a requester paying for a GPU would get something slower
//! than the node's own tract path. They may still be chosen explicitly for tests
//! ([`GpuConfig::allow_cpu_adapter`](super::GpuConfig)).

use crank_protocol::GpuAdapter;
use serde::{Deserialize, Serialize};

/// An adapter as the probe saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterSummary {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Graphics API backend (`vulkan`, `metal`, `dx12`, `gl`).
    pub backend: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` or `other`.
    pub kind: String,
    /// Driver name and version, when the driver says.
    pub driver: String,
    /// Whether the adapter is a CPU emulation of a GPU.
    pub emulated: bool,
}

/// Name fragments of software adapters that do not always report `DeviceType::Cpu`.
const SOFTWARE_NAMES: [&str; 6] = [
    "llvmpipe",
    "lavapipe",
    "softpipe",
    "swiftshader",
    "microsoft basic render",
    "warp",
];

impl AdapterSummary {
    /// Summarises wgpu's adapter info.
    pub fn from_info(info: &wgpu::AdapterInfo) -> Self {
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        };
        let lower = info.name.to_lowercase();
        let emulated = info.device_type == wgpu::DeviceType::Cpu
            || SOFTWARE_NAMES.iter().any(|s| lower.contains(s));
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            name: info.name.clone(),
            backend: info.backend.to_str().to_string(),
            kind: kind.to_string(),
            driver,
            emulated,
        }
    }

    /// The advert entry for this adapter; `None` for a CPU-emulated one.
    pub fn to_advert(&self) -> Option<GpuAdapter> {
        (!self.emulated).then(|| GpuAdapter {
            name: self.name.clone(),
            backend: self.backend.clone(),
            kind: self.kind.clone(),
        })
    }

    /// Lower is better: discrete, integrated, virtual, other, then emulated.
    fn rank(&self) -> u8 {
        if self.emulated {
            return 9;
        }
        match self.kind.as_str() {
            "discrete" => 0,
            "integrated" => 1,
            "virtual" => 2,
            _ => 3,
        }
    }
}

/// Picks the adapter to run on: the best-ranked real GPU; an emulated one only when
/// `allow_emulated`; restricted to names containing `name_filter` (case-insensitive) when it
/// is not empty. Returns an index into `adapters`.
pub(crate) fn choose(
    adapters: &[AdapterSummary],
    allow_emulated: bool,
    name_filter: &str,
) -> Option<usize> {
    let filter = name_filter.to_lowercase();
    adapters
        .iter()
        .enumerate()
        .filter(|(_, a)| allow_emulated || !a.emulated)
        .filter(|(_, a)| filter.is_empty() || a.name.to_lowercase().contains(&filter))
        .min_by_key(|(i, a)| (a.rank(), *i))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, device_type: wgpu::DeviceType) -> wgpu::AdapterInfo {
        wgpu::AdapterInfo {
            name: name.into(),
            driver: "drv".into(),
            driver_info: "1.0".into(),
            ..wgpu::AdapterInfo::new(device_type, wgpu::Backend::Vulkan)
        }
    }

    #[test]
    fn software_adapters_are_never_advertised() {
        let lvp = AdapterSummary::from_info(&info(
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            wgpu::DeviceType::Cpu,
        ));
        assert!(lvp.emulated);
        assert_eq!(lvp.to_advert(), None);
        // SwiftShader has been seen reporting a non-CPU type; its name still gives it away.
        let swift = AdapterSummary::from_info(&info(
            "SwiftShader Device (Subzero)",
            wgpu::DeviceType::Other,
        ));
        assert!(swift.emulated);
        let real = AdapterSummary::from_info(&info(
            "NVIDIA GeForce RTX 4070",
            wgpu::DeviceType::DiscreteGpu,
        ));
        assert_eq!(
            real.to_advert(),
            Some(GpuAdapter {
                name: "NVIDIA GeForce RTX 4070".into(),
                backend: "vulkan".into(),
                kind: "discrete".into(),
            })
        );
        assert_eq!(real.driver, "drv 1.0");
    }

    #[test]
    fn the_best_real_adapter_wins_and_emulation_needs_consent() {
        let list: Vec<AdapterSummary> = [
            ("llvmpipe", wgpu::DeviceType::Cpu),
            ("Intel UHD 770", wgpu::DeviceType::IntegratedGpu),
            ("AMD RX 7600", wgpu::DeviceType::DiscreteGpu),
        ]
        .iter()
        .map(|(n, t)| AdapterSummary::from_info(&info(n, *t)))
        .collect();
        assert_eq!(choose(&list, false, ""), Some(2));
        assert_eq!(choose(&list, true, ""), Some(2));
        assert_eq!(choose(&list, false, "intel"), Some(1));
        assert_eq!(choose(&list, false, "llvm"), None);
        assert_eq!(choose(&list, true, "LLVM"), Some(0));
        assert_eq!(choose(&list[..1], false, ""), None);
        assert_eq!(choose(&list[..1], true, ""), Some(0));
        assert_eq!(choose(&[], true, ""), None);
    }
}
