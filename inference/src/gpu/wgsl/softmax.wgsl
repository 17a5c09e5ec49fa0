// Softmax or LogSoftmax: one 64-thread workgroup per row, rows of `len` elements `inner`
// apart. Subtracting the row maximum keeps exp finite.
// params: 0 rows, 1 len, 2 inner, 3 log.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.y * nwg.x + wg.x;
    if (row >= p(0u)) {
        return;
    }
    let len = p(1u);
    let inner = p(2u);
    let base = (row / inner) * len * inner + row % inner;
    var m = neg_inf();
    for (var j = lid; j < len; j += 64u) {
        m = max(m, x[base + j * inner]);
    }
    red[lid] = m;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var j = lid; j < len; j += 64u) {
        sum += exp(x[base + j * inner] - mx);
    }
    red[lid] = sum;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    let is_log = p(3u) == 1u;
    let log_total = log(total);
    for (var j = lid; j < len; j += 64u) {
        let e = x[base + j * inner] - mx;
        if (is_log) {
            y[base + j * inner] = e - log_total;
        } else {
            y[base + j * inner] = exp(e) / total;
        }
    }
}
