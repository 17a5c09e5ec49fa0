// Max or average pooling over 2-D planes, one output per thread. Padding never contributes
// to a max; an average divides by the window's cells inside the input, or inside the padded
// input when count_include_pad is set.
// params: 0 outputs, 1 H, 2 W, 3 OH, 4 OW, 5 KH, 6 KW, 7 SH, 8 SW, 9 pad top, 10 pad left,
// 11 pad bottom, 12 pad right, 13 DH, 14 DW, 15 max, 16 count_include_pad.
@group(0) @binding(1) var<storage, read> x: array<f32>;
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
    let h = i32(p(1u));
    let w = i32(p(2u));
    let oh_n = p(3u);
    let ow_n = p(4u);
    let kh = p(5u);
    let kw = p(6u);
    let sh = p(7u);
    let sw = p(8u);
    let pt = i32(p(9u));
    let pl = i32(p(10u));
    let pb = i32(p(11u));
    let pr = i32(p(12u));
    let dh = p(13u);
    let dw = p(14u);
    let is_max = p(15u) == 1u;
    let ow = i % ow_n;
    let t = i / ow_n;
    let oh = t % oh_n;
    let plane = t / oh_n;
    let base = plane * u32(h) * u32(w);
    var best = neg_inf();
    var sum = 0.0;
    var inside = 0u;
    var padded = 0u;
    for (var ky = 0u; ky < kh; ky++) {
        let iy = i32(oh * sh + ky * dh) - pt;
        for (var kx = 0u; kx < kw; kx++) {
            let ix = i32(ow * sw + kx * dw) - pl;
            if (iy < h + pb && ix < w + pr) {
                padded += 1u;
            }
            if (iy >= 0 && iy < h && ix >= 0 && ix < w) {
                let v = x[base + u32(iy) * u32(w) + u32(ix)];
                best = max(best, v);
                sum += v;
                inside += 1u;
            }
        }
    }
    if (is_max) {
        y[i] = best;
    } else if (p(16u) == 1u) {
        y[i] = sum / f32(padded);
    } else {
        y[i] = sum / f32(inside);
    }
}
