// Index of the largest (or smallest) element along an axis, written as int64 (two words).
// Ties go to the first index unless select_last is set.
// params: 0 outputs, 1 len, 2 inner, 3 select_last, 4 min.
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
    let len = p(1u);
    let inner = p(2u);
    let last = p(3u) == 1u;
    let is_min = p(4u) == 1u;
    let base = (i / inner) * len * inner + i % inner;
    var best = x[base];
    var at = 0u;
    for (var j = 1u; j < len; j++) {
        let v = x[base + j * inner];
        var better: bool;
        if (is_min) {
            better = v < best || (last && v == best);
        } else {
            better = v > best || (last && v == best);
        }
        if (better) {
            best = v;
            at = j;
        }
    }
    y[2u * i] = at;
    y[2u * i + 1u] = 0u;
}
