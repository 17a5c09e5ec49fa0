// Gather along an axis: out[o, j, w] = data[o, index[j], w], on 32-bit words (int64 data is
// two words per element, counted in `inner`). Negative indices count from the end; an index
// out of range sets the error flag, which the host turns into an error.
// params: 0 output words, 1 axis length, 2 inner words, 3 indices.
@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<u32>;
@group(0) @binding(4) var<storage, read_write> err: array<atomic<u32>>;

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
    let len = i32(p(1u));
    let inner = p(2u);
    let n_idx = p(3u);
    let w = i % inner;
    let t = i / inner;
    let j = t % n_idx;
    let o = t / n_idx;
    let lo = idx[2u * j];
    let hi = idx[2u * j + 1u];
    var v = 0;
    var ok = true;
    if (hi == 0u && lo < 0x80000000u) {
        v = i32(lo);
    } else if (hi == 0xffffffffu && lo >= 0x80000000u) {
        v = bitcast<i32>(lo);
    } else {
        ok = false;
    }
    if (ok && v < 0) {
        v += len;
    }
    if (!ok || v < 0 || v >= len) {
        atomicMax(&err[0], 1u);
        y[i] = 0u;
        return;
    }
    y[i] = data[(o * u32(len) + u32(v)) * inner + w];
}
