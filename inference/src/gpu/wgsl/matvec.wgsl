// The matrix product for few rows (M < 16, e.g. batch 1): one thread per output element,
// walking all of K. Neighbouring threads read neighbouring columns of B; the tiled kernel
// would compute a 64-row tile for a single row here. Same parameters and bindings as
// matmul.wgsl: 0 M, 1 N, 2 K, 3 batch, 4-6 A strides, 7-9 B strides, 10-12 bias strides,
// 13 has bias, 14 activation, 15 alpha, 16 beta.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear(wg, nwg, li, 256u);
    let m = p(0u);
    let n = p(1u);
    let k = p(2u);
    if (i >= m * n * p(3u)) {
        return;
    }
    let col = i % n;
    let t = i / n;
    let row = t % m;
    let batch = t / m;
    let a_base = batch * p(4u) + row * p(5u);
    let a_cs = p(6u);
    let b_base = batch * p(7u) + col * p(9u);
    let b_rs = p(8u);
    // Four partial sums shorten the dependency chain of the additions.
    var acc = vec4<f32>(0.0);
    var kk = 0u;
    for (; kk + 4u <= k; kk += 4u) {
        let av = vec4<f32>(
            a[a_base + kk * a_cs],
            a[a_base + (kk + 1u) * a_cs],
            a[a_base + (kk + 2u) * a_cs],
            a[a_base + (kk + 3u) * a_cs],
        );
        let bv = vec4<f32>(
            b[b_base + kk * b_rs],
            b[b_base + (kk + 1u) * b_rs],
            b[b_base + (kk + 2u) * b_rs],
            b[b_base + (kk + 3u) * b_rs],
        );
        acc += av * bv;
    }
    var sum = (acc.x + acc.y) + (acc.z + acc.w);
    for (; kk < k; kk++) {
        sum += a[a_base + kk * a_cs] * b[b_base + kk * b_rs];
    }
    var v = pf(15u) * sum;
    if (p(13u) == 1u) {
        v += pf(16u) * bias[batch * p(10u) + row * p(11u) + col * p(12u)];
    }
    c[i] = activate(v, p(14u));
}
