//! The WGSL compute kernels, compiled once per device.
//!
//! Each kernel is one WGSL module (the shared prelude plus its file under `wgsl/`) with one
//! entry point, `main`. Binding 0 is the parameter block; the operands follow in the order
//! [`Step::reads`](super::lower::Step) lists them, then the output, then the run's error
//! flag for the kernels that have one.

use std::borrow::Cow;

use super::error::GpuError;
use super::lower::Kernel;

const PRELUDE: &str = include_str!("wgsl/prelude.wgsl");

/// The WGSL source of a kernel, without the prelude.
fn body(k: Kernel) -> &'static str {
    match k {
        Kernel::MatMul => include_str!("wgsl/matmul.wgsl"),
        Kernel::MatVec => include_str!("wgsl/matvec.wgsl"),
        Kernel::Conv => include_str!("wgsl/conv.wgsl"),
        Kernel::Pool => include_str!("wgsl/pool.wgsl"),
        Kernel::Binary => include_str!("wgsl/binary.wgsl"),
        Kernel::Unary => include_str!("wgsl/unary.wgsl"),
        Kernel::Softmax => include_str!("wgsl/softmax.wgsl"),
        Kernel::ArgMax => include_str!("wgsl/argmax.wgsl"),
        Kernel::Gather => include_str!("wgsl/gather.wgsl"),
        Kernel::CastF32ToI64 => include_str!("wgsl/cast_f32_i64.wgsl"),
        Kernel::CastI64ToF32 => include_str!("wgsl/cast_i64_f32.wgsl"),
    }
}

/// The full WGSL source of a kernel.
pub(crate) fn source(k: Kernel) -> String {
    format!("{PRELUDE}\n{}", body(k))
}

/// A compiled kernel: its pipeline and the layout of its bind group.
pub(crate) struct Compiled {
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Layout of bind group 0, derived from the shader.
    pub layout: wgpu::BindGroupLayout,
}

/// Every kernel, compiled for one device.
pub(crate) struct Kernels {
    compiled: Vec<(Kernel, Compiled)>,
}

impl Kernels {
    /// Compiles all kernels. Shader errors surface through the caller's error scope.
    pub fn compile(device: &wgpu::Device) -> Self {
        let compiled = Kernel::ALL
            .iter()
            .map(|k| {
                let label = format!("crank {k:?}");
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&label),
                    source: wgpu::ShaderSource::Wgsl(Cow::Owned(source(*k))),
                });
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                    cache: None,
                });
                let layout = pipeline.get_bind_group_layout(0);
                (*k, Compiled { pipeline, layout })
            })
            .collect();
        Self { compiled }
    }

    /// The compiled kernel.
    pub fn get(&self, k: Kernel) -> Result<&Compiled, GpuError> {
        self.compiled
            .iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, c)| c)
            .ok_or_else(|| GpuError::Backend(format!("kernel {k:?} was not compiled")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel parses and validates as WGSL (naga, the compiler wgpu uses), so a
    /// broken shader fails here even on machines without any adapter.
    #[test]
    fn every_kernel_is_valid_wgsl() {
        for k in Kernel::ALL {
            let src = source(k);
            let module = match naga::front::wgsl::parse_str(&src) {
                Ok(m) => m,
                Err(e) => panic!("{k:?}: {}", e.emit_to_string(&src)),
            };
            let mut v = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty(),
            );
            if let Err(e) = v.validate(&module) {
                panic!("{k:?}: {}", e.emit_to_string(&src));
            }
        }
    }
}
