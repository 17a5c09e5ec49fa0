// Direct 2-D convolution (NCHW, grouped, strided, dilated, padded), one output per thread,
// with bias and fused activation. 1-D convolutions run with height 1.
// params: 0 outputs, 1 C, 2 H, 3 W, 4 OC, 5 OH, 6 OW, 7 KH, 8 KW, 9 SH, 10 SW, 11 pad top,
// 12 pad left, 13 DH, 14 DW, 15 groups, 16 has bias, 17 activation.
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

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
    let c = p(1u);
    let h = p(2u);
    let wd = p(3u);
    let oc_n = p(4u);
    let oh_n = p(5u);
    let ow_n = p(6u);
    let kh = p(7u);
    let kw = p(8u);
    let sh = p(9u);
    let sw = p(10u);
    let pt = i32(p(11u));
    let pl = i32(p(12u));
    let dh = p(13u);
    let dw = p(14u);
    let groups = p(15u);
    let ow = i % ow_n;
    let t1 = i / ow_n;
    let oh = t1 % oh_n;
    let t2 = t1 / oh_n;
    let oc = t2 % oc_n;
    let n = t2 / oc_n;
    let cpg = c / groups;
    let g = oc / (oc_n / groups);
    var acc = 0.0;
    for (var ic = 0u; ic < cpg; ic++) {
        let x_base = (n * c + g * cpg + ic) * h * wd;
        let w_base = (oc * cpg + ic) * kh * kw;
        for (var ky = 0u; ky < kh; ky++) {
            let iy = i32(oh * sh + ky * dh) - pt;
            if (iy < 0 || iy >= i32(h)) {
                continue;
            }
            for (var kx = 0u; kx < kw; kx++) {
                let ix = i32(ow * sw + kx * dw) - pl;
                if (ix < 0 || ix >= i32(wd)) {
                    continue;
                }
                acc += x[x_base + u32(iy) * wd + u32(ix)] * w[w_base + ky * kw + kx];
            }
        }
    }
    if (p(16u) == 1u) {
        acc += bias[oc];
    }
    y[i] = activate(acc, p(17u));
}
