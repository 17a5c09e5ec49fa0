// C[b] = act(alpha * A[b]·B[b] + beta * bias), tiled: each 16x16 workgroup computes a 64x64
// tile of C, each thread a 4x4 block, staging 16-deep slices of A and B in workgroup memory.
// Operands are addressed through strides, so transposed and broadcast operands need no copy.
// params: 0 M, 1 N, 2 K, 3 batch, 4-6 A batch/row/col strides, 7-9 B batch/row/col strides,
// 10-12 bias batch/row/col strides, 13 has bias, 14 activation, 15 alpha, 16 beta.
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const TILE: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> ta: array<f32, 1024>; // [BK][TILE]
var<workgroup> tb: array<f32, 1024>; // [BK][TILE]

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m = p(0u);
    let n = p(1u);
    let k = p(2u);
    let a_base = wg.z * p(4u);
    let a_rs = p(5u);
    let a_cs = p(6u);
    let b_base = wg.z * p(7u);
    let b_rs = p(8u);
    let b_cs = p(9u);
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < k; k0 += BK) {
        for (var t = 0u; t < 4u; t++) {
            let e = li + t * 256u;
            // A: neighbouring threads read neighbouring k of one row.
            let ar = e / BK;
            let ak = e % BK;
            var va = 0.0;
            if (row0 + ar < m && k0 + ak < k) {
                va = a[a_base + (row0 + ar) * a_rs + (k0 + ak) * a_cs];
            }
            ta[ak * TILE + ar] = va;
            // B: neighbouring threads read neighbouring columns of one k.
            let bk = e / TILE;
            let bc = e % TILE;
            var vb = 0.0;
            if (k0 + bk < k && col0 + bc < n) {
                vb = b[b_base + (k0 + bk) * b_rs + (col0 + bc) * b_cs];
            }
            tb[bk * TILE + bc] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let o = kk * TILE + lid.x;
            let bv = vec4<f32>(tb[o], tb[o + 16u], tb[o + 32u], tb[o + 48u]);
            let r = kk * TILE + lid.y;
            acc[0] += ta[r] * bv;
            acc[1] += ta[r + 16u] * bv;
            acc[2] += ta[r + 32u] * bv;
            acc[3] += ta[r + 48u] * bv;
        }
        workgroupBarrier();
    }
    let has_bias = p(13u) == 1u;
    let act = p(14u);
    let alpha = pf(15u);
    let beta = pf(16u);
    let bias_base = wg.z * p(10u);
    let bias_rs = p(11u);
    let bias_cs = p(12u);
    let c_base = wg.z * m * n;
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y + 16u * i;
        if (r >= m) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x + 16u * j;
            if (col >= n) {
                continue;
            }
            var v = alpha * acc[i][j];
            if (has_bias) {
                v += beta * bias[bias_base + r * bias_rs + col * bias_cs];
            }
            c[c_base + r * n + col] = activate(v, act);
        }
    }
}
