// int64 to float32: exact rounding below 2^31 in magnitude, within one ulp above.
// params: 0 elements.
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear(wg, nwg, li, 256u);
    if (i >= p(0u)) {
        return;
    }
    let lo = x[2u * i];
    let hi = x[2u * i + 1u];
    if ((hi == 0u && lo < 0x80000000u) || (hi == 0xffffffffu && lo >= 0x80000000u)) {
        y[i] = f32(bitcast<i32>(lo));
    } else {
        y[i] = f32(bitcast<i32>(hi)) * 4294967296.0 + f32(lo);
    }
}
