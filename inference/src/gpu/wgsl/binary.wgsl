// Element-wise binary operation with numpy broadcasting (rank up to 6), fused activation.
// params: 0 outputs, 1 op (0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min, 6 pow), 2 activation,
// 3 rank, 4-9 output dims, 10-15 A strides, 16-21 B strides (0 on broadcast axes).
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// ONNX Pow: a negative base with an integral exponent is defined.
fn power(x: f32, e: f32) -> f32 {
    if (e == 0.0) {
        return 1.0;
    }
    if (x == 0.0) {
        if (e > 0.0) {
            return 0.0;
        }
        return bitcast<f32>(0x7f800000u);
    }
    if (x < 0.0 && e == floor(e)) {
        let r = pow(-x, e);
        if (e - 2.0 * floor(e / 2.0) == 1.0) {
            return -r;
        }
        return r;
    }
    return pow(x, e);
}

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
    let op = p(1u);
    let rank = p(3u);
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = 0u; d < rank; d++) {
        let ax = rank - 1u - d;
        let dim = p(4u + ax);
        let coord = rem % dim;
        rem = rem / dim;
        ia += coord * p(10u + ax);
        ib += coord * p(16u + ax);
    }
    let u = a[ia];
    let v = b[ib];
    var r: f32;
    switch op {
        case 0u: { r = u + v; }
        case 1u: { r = u - v; }
        case 2u: { r = u * v; }
        case 3u: { r = u / v; }
        case 4u: { r = max(u, v); }
        case 5u: { r = min(u, v); }
        default: { r = power(u, v); }
    }
    y[i] = activate(r, p(2u));
}
