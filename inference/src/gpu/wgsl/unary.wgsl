// Element-wise unary operations, written in forms that stay finite for large inputs.
// params: 0 elements, 1 op, 2 first parameter (alpha / lower bound), 3 second (beta / upper).
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn sigmoid(v: f32) -> f32 {
    if (v >= 0.0) {
        return 1.0 / (1.0 + exp(-v));
    }
    let e = exp(v);
    return e / (1.0 + e);
}

fn tanh_stable(v: f32) -> f32 {
    let t = exp(-2.0 * abs(v));
    return sign(v) * (1.0 - t) / (1.0 + t);
}

// Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7).
fn erf_approx(v: f32) -> f32 {
    let s = sign(v);
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
        + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-z * z));
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
    let v = x[i];
    let alpha = pf(2u);
    let beta = pf(3u);
    var r: f32;
    switch p(1u) {
        case 0u: { r = max(v, 0.0); }
        case 1u: { r = select(alpha * v, v, v >= 0.0); }
        case 2u: { r = sigmoid(v); }
        case 3u: { r = tanh_stable(v); }
        case 4u: { r = exp(v); }
        case 5u: { r = log(v); }
        case 6u: { r = sqrt(v); }
        case 7u: { r = -v; }
        case 8u: { r = abs(v); }
        case 9u: { r = 1.0 / v; }
        case 10u: { r = floor(v); }
        case 11u: { r = ceil(v); }
        case 12u: { r = min(max(v, alpha), beta); }
        case 13u: { r = select(alpha * (exp(v) - 1.0), v, v >= 0.0); }
        case 14u: { r = clamp(alpha * v + beta, 0.0, 1.0); }
        case 15u: { r = max(v, 0.0) + log(1.0 + exp(-abs(v))); }
        default: { r = erf_approx(v); }
    }
    y[i] = r;
}
