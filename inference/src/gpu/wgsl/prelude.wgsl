// Shared by every kernel: the parameter block and small helpers.
// Parameters are 48 u32 words; floats travel as their bits.
struct Params {
    v: array<vec4<u32>, 12>,
}

@group(0) @binding(0) var<uniform> params: Params;

fn p(i: u32) -> u32 {
    return params.v[i / 4u][i % 4u];
}

fn pf(i: u32) -> f32 {
    return bitcast<f32>(p(i));
}

// One-dimensional invocation index of a kernel dispatched over a 2-D grid (so that more
// than 65,535 workgroups fit).
fn linear(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * size + lid;
}

// Fused activation: 0 none, 1 relu.
fn activate(x: f32, kind: u32) -> f32 {
    if (kind == 1u) {
        return max(x, 0.0);
    }
    return x;
}

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}
