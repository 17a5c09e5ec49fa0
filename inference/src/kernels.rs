//! Replacements for tract operators that are slow on the shapes small models produce.
//!
//! tract 0.23.9 runs a float softmax over rows whose length is not a multiple of 4 (10
//! classes, say) through three generic vector kernels per row, each with its own set-up: about
//! 0.6 µs per row, which made the softmax of a 128-row batch of the digits MLP cost more than
//! its two matrix products together. [`ShortRowSoftmax`] does those rows in one plain loop.
//! The optimised plan is patched after tract has finished optimising it, so nothing else about
//! the graph changes.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Softmax of f32 data over its last axis, one contiguous row at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ShortRowSoftmax;

impl Op for ShortRowSoftmax {
    fn name(&self) -> StaticName {
        "ShortRowSoftmax".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ShortRowSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let mut t = input.into_tensor();
        let row = *t
            .shape()
            .last()
            .ok_or_else(|| format_err!("softmax of a scalar"))?;
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            let data = plain.as_slice_mut::<f32>()?;
            if row > 0 {
                data.chunks_exact_mut(row).for_each(softmax_row);
            }
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for ShortRowSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// In place: `x -> exp(x - max) / sum`, the numerically stable form.
fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = sum.recip();
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// Swaps in [`ShortRowSoftmax`] for every f32 softmax over a last axis of fixed length that
/// tract's row kernel does not take (not a multiple of 4). Returns how many were replaced.
pub(crate) fn patch(model: &mut TypedModel) -> TractResult<usize> {
    let mut replace = Vec::new();
    for node in model.nodes() {
        let Some(sm) = node.op_as::<Softmax>() else {
            continue;
        };
        let Some(input) = node.inputs.first() else {
            continue;
        };
        let fact = model.outlet_fact(*input)?;
        let rank = fact.rank();
        let short_rows = rank > 0
            && fact.shape[rank - 1]
                .to_usize()
                .is_ok_and(|n| !n.is_multiple_of(4));
        if sm.kind == SoftmaxKind::Softmax
            && sm.quant_output_dt.is_none()
            && fact.datum_type == f32::datum_type()
            && sm.axes.as_slice() == [rank - 1]
            && short_rows
        {
            replace.push(node.id);
        }
    }
    for id in &replace {
        model.nodes_mut()[*id].op = Box::new(ShortRowSoftmax);
    }
    Ok(replace.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: &dyn TypedOp, t: &Tensor) -> Vec<f32> {
        let out = op
            .eval_out_of_plan(tvec!(t.clone().into_tvalue()))
            .unwrap()
            .unwrap();
        out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn agrees_with_tract_softmax() {
        let values: Vec<f32> = (0..7 * 10)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
            .collect();
        let t = Tensor::from_shape(&[7, 10], &values).unwrap();
        let ours = run(&ShortRowSoftmax, &t);
        let theirs = run(&Softmax::new(tvec!(1), None, SoftmaxKind::Softmax), &t);
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        for row in ours.chunks(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let t = Tensor::from_shape(&[1, 3], &[1000.0f32, 1000.0, -1000.0]).unwrap();
        let out = run(&ShortRowSoftmax, &t);
        assert_eq!(out, vec![0.5, 0.5, 0.0]);
    }
}
