//! `ndarray` views of what a plugin works on: the dense score vector a `recommend` ends with,
//! a model's row-major matrices (item or user factors, as the SDK's snapshots store them:
//! [`crate::snapshot::f32_blob`]), and the request's history as columns. For researchers who
//! write their algorithms with `ndarray`, the array crate Rust's numerical code knows.
//!
//! The views borrow the slices the rest of the SDK works on, so an `ndarray` algorithm and
//! the SDK's kernels ([`crate::kernels`], [`crate::topk`]) share one model without copies.
//! Behind the `ndarray` feature, off by default: the bundled plugins use the slices and
//! kernels (measured in WebAssembly, see `kernels`), and pay nothing for this module.

use ndarray::{Array1, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, ShapeError};

use crate::weights::EventWeights;
use crate::{Feedback, ItemIndex, Scored, topk};

/// A row-major matrix stored flat (`values.len()` = rows × `width`), viewed as rows × width:
/// `factors(&model.item_factors, k)?.row(item)`.
pub fn matrix(values: &[f32], width: usize) -> Result<ArrayView2<'_, f32>, ShapeError> {
    ArrayView2::from_shape((rows(values.len(), width)?, width), values)
}

/// [`matrix`], mutable: an update that writes through the view writes the model.
pub fn matrix_mut(values: &mut [f32], width: usize) -> Result<ArrayViewMut2<'_, f32>, ShapeError> {
    let rows = rows(values.len(), width)?;
    ArrayViewMut2::from_shape((rows, width), values)
}

fn rows(len: usize, width: usize) -> Result<usize, ShapeError> {
    if width == 0 || len % width != 0 {
        return Err(ShapeError::from_kind(ndarray::ErrorKind::IncompatibleShape));
    }
    Ok(len / width)
}

/// Scores indexed by item, as a vector.
pub fn scores(values: &[f32]) -> ArrayView1<'_, f32> {
    ArrayView1::from(values)
}

/// [`scores`], mutable.
pub fn scores_mut(values: &mut [f32]) -> ArrayViewMut1<'_, f32> {
    ArrayViewMut1::from(values)
}

/// The best `count` items of `scores` (any layout), best first, none of `exclude`, ties to
/// the lower index: [`topk::top_k`] for an `ndarray` vector.
pub fn top_k(scores: ArrayView1<'_, f32>, count: usize, exclude: &[ItemIndex]) -> Vec<Scored> {
    match scores.as_slice() {
        Some(slice) => topk::top_k(slice, count, exclude),
        None => topk::top_k(&scores.to_vec(), count, exclude),
    }
}

/// A user's history (the request's, newest first) as columns of equal length, in its order.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryColumns {
    pub items: Array1<ItemIndex>,
    pub values: Array1<f32>,
    pub timestamps: Array1<u64>,
    /// Each event's weight by its kind ([`EventWeights::weight`]).
    pub weights: Array1<f32>,
}

/// `history` split into columns, each event weighted by `weights`.
pub fn history_columns(history: &[Feedback], weights: &EventWeights) -> HistoryColumns {
    HistoryColumns {
        items: history.iter().map(|e| e.item).collect(),
        values: history.iter().map(|e| e.value).collect(),
        timestamps: history.iter().map(|e| e.timestamp).collect(),
        weights: history.iter().map(|e| weights.weight(e)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Axis;

    use super::*;
    use crate::testing::click;
    use crate::{EventKind, kernels};

    /// 4 items × 3 factors, row-major.
    const FACTORS: [f32; 12] = [
        1.0, 0.0, 0.5, //
        0.0, 1.0, 0.5, //
        0.2, 0.2, 0.0, //
        1.0, 1.0, 1.0,
    ];

    #[test]
    fn an_ndarray_model_gives_what_the_kernels_give() {
        // A user's taste: the sum of the factor rows of the items in the history.
        let history = [click(0, 3), click(0, 1)];
        let columns = history_columns(&history, &EventWeights::default());
        let rows: Vec<usize> = columns.items.iter().map(|&i| i as usize).collect();
        let factors = matrix(&FACTORS, 3).unwrap();
        let taste = factors.select(Axis(0), &rows).sum_axis(Axis(0));
        let mut expected = vec![0.0; 3];
        kernels::sum_rows(&FACTORS, 3, &[3, 1], &mut expected);
        assert_eq!(taste.to_vec(), expected);

        // Every item's score against it, then the best two the user has not seen.
        let all = factors.dot(&taste);
        let by_slices: Vec<f32> = FACTORS
            .chunks(3)
            .map(|row| row.iter().zip(&expected).map(|(a, b)| a * b).sum())
            .collect();
        assert_eq!(all.to_vec(), by_slices);
        assert_eq!(
            top_k(all.view(), 2, &[1, 3]),
            topk::top_k(&by_slices, 2, &[1, 3])
        );
        // A strided view (every other item) is ranked by its own positions.
        let strided = all.slice(ndarray::s![..;2]);
        assert_eq!(
            top_k(strided, 1, &[]),
            topk::top_k(&[all[0], all[2]], 1, &[])
        );
    }

    #[test]
    fn views_write_through_and_refuse_wrong_shapes() {
        let mut values = FACTORS.to_vec();
        matrix_mut(&mut values, 3).unwrap().row_mut(2).fill(9.0);
        assert_eq!(&values[6..9], &[9.0, 9.0, 9.0]);
        scores_mut(&mut values)[0] = -1.0;
        assert_eq!(scores(&values)[0], -1.0);
        assert!(matrix(&FACTORS, 5).is_err());
        assert!(matrix(&FACTORS, 0).is_err());
        assert_eq!(matrix(&[], 3).unwrap().nrows(), 0);
    }

    #[test]
    fn history_columns_keep_the_order_and_weigh_by_kind() {
        let mut view = click(1, 7);
        view.kind = EventKind::View;
        view.timestamp = 9;
        let columns = history_columns(&[view, click(1, 2)], &EventWeights::default());
        assert_eq!(columns.items.to_vec(), vec![7, 2]);
        assert_eq!(columns.timestamps.to_vec(), vec![9, 1]);
        assert_eq!(columns.weights.to_vec(), vec![0.5, 1.0]);
        assert_eq!(columns.values.to_vec(), vec![1.0, 1.0]);
    }
}
