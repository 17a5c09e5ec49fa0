// float32 to int64, rounding toward zero and saturating like Rust's `as` (NaN gives 0).
// params: 0 elements.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

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
    let v = x[i];
    var lo = 0u;
    var hi = 0u;
    if (v >= 9.223372e18) {
        lo = 0xffffffffu;
        hi = 0x7fffffffu;
    } else if (v <= -9.223372e18) {
        hi = 0x80000000u;
    } else if (abs(v) < 2147483648.0) {
        let s = i32(trunc(v));
        lo = bitcast<u32>(s);
        hi = select(0u, 0xffffffffu, s < 0);
    } else if (abs(v) >= 2147483648.0) {
        // |v| >= 2^31 is an integer; split it exactly into high and low words.
        let h = floor(v / 4294967296.0);
        lo = u32(v - h * 4294967296.0);
        hi = bitcast<u32>(i32(h));
    }
    y[2u * i] = lo;
    y[2u * i + 1u] = hi;
}
