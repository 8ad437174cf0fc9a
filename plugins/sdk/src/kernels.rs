//! Numeric inner loops shaped so that they run fast in WebAssembly too.
//!
//! Cranelift, which compiles plugins in the host, does not unroll loops, and every loop
//! iteration pays the host's epoch check (its time limit): a load, a compare and a branch.
//! A plain element-wise loop pays that for every 4 floats. These kernels work on fixed-size
//! blocks that LLVM turns into several 128-bit SIMD operations per iteration. Measured on the
//! `collaborative` plugin's scoring (`cargo bench -p recohost --bench native_vs_wasm`): 42 → 23
//! µs per request in WebAssembly, unchanged natively. Accumulating a block over all rows in
//! registers was tried and is slower in WebAssembly: Cranelift spills the accumulators.

/// Floats handled per block: four 128-bit vectors.
const BLOCK: usize = 16;

/// `out[j] = Σ_r matrix[r * width + j]` over the `rows` given: the sum of some rows of a
/// row-major matrix. `out.len()` must be `width`; rows outside the matrix are a bug (panic).
pub fn sum_rows(matrix: &[f32], width: usize, rows: &[u32], out: &mut [f32]) {
    assert_eq!(out.len(), width, "output length must equal the row width");
    out.fill(0.0);
    for &r in rows {
        let row = &matrix[r as usize * width..r as usize * width + width];
        add_assign(out, row);
    }
}

/// `out[j] += values[j]` for every `j` (the shorter length wins), a block per iteration.
pub fn add_assign(out: &mut [f32], values: &[f32]) {
    let mut out_blocks = out.chunks_exact_mut(BLOCK);
    let mut value_blocks = values.chunks_exact(BLOCK);
    for (o, v) in (&mut out_blocks).zip(&mut value_blocks) {
        let o: &mut [f32; BLOCK] = o.try_into().expect("block length");
        let v: &[f32; BLOCK] = v.try_into().expect("block length");
        for (o, v) in o.iter_mut().zip(v) {
            *o += v;
        }
    }
    for (o, v) in out_blocks
        .into_remainder()
        .iter_mut()
        .zip(value_blocks.remainder())
    {
        *o += v;
    }
}

/// Whether any of `values` is greater than `floor` (NaN never is). Branch-free within blocks,
/// so that scanning a long score vector for the few candidates above a threshold is cheap.
pub fn any_above(values: &[f32], floor: f32) -> bool {
    let mut blocks = values.chunks_exact(BLOCK);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &v| any | (v > floor)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&v| v > floor)
}

/// The smallest and largest of `values`, NaN ignored; `(inf, -inf)` when there is none.
///
/// One comparison-and-select per lane and bound (not `f32::min`/`max`: in WebAssembly those
/// are calls to `fminf`/`fmaxf`, whose NaN rules differ from the SIMD instructions), blocks of
/// lanes kept apart until the end so that both compilers vectorize it.
pub fn min_max(values: &[f32]) -> (f32, f32) {
    let mut low = [f32::INFINITY; BLOCK];
    let mut high = [f32::NEG_INFINITY; BLOCK];
    let mut blocks = values.chunks_exact(BLOCK);
    for block in &mut blocks {
        let block: &[f32; BLOCK] = block.try_into().expect("block length");
        for ((low, high), &v) in low.iter_mut().zip(high.iter_mut()).zip(block) {
            *low = if v < *low { v } else { *low };
            *high = if v > *high { v } else { *high };
        }
    }
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in low.iter().chain(blocks.remainder()) {
        min = if v < min { v } else { min };
    }
    for &v in high.iter().chain(blocks.remainder()) {
        max = if v > max { v } else { max };
    }
    (min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_selected_rows_including_the_tail() {
        let width = BLOCK * 2 + 3;
        let matrix: Vec<f32> = (0..4 * width).map(|i| i as f32).collect();
        let mut out = vec![f32::NAN; width];
        sum_rows(&matrix, width, &[1, 3], &mut out);
        for (j, &value) in out.iter().enumerate() {
            let expected = (width + j) as f32 + (3 * width + j) as f32;
            assert_eq!(value, expected, "column {j}");
        }
    }

    #[test]
    fn no_rows_sum_to_zero() {
        let mut out = vec![1.0; 20];
        sum_rows(&[0.5; 40], 20, &[], &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn min_max_ignores_nan_and_reads_the_tail() {
        assert_eq!(min_max(&[]), (f32::INFINITY, f32::NEG_INFINITY));
        assert_eq!(min_max(&[f32::NAN; 40]), (f32::INFINITY, f32::NEG_INFINITY));
        assert_eq!(min_max(&[2.0, f32::NAN, -3.0]), (-3.0, 2.0)); // no whole block
        assert_eq!(min_max(&[1.0; BLOCK]), (1.0, 1.0));
        let mut values: Vec<f32> = (0..BLOCK * 3 + 5).map(|i| (i % 7) as f32).collect();
        values[2] = f32::NAN;
        assert_eq!(min_max(&values), (0.0, 6.0));
        values[BLOCK * 3 + 4] = -1.5; // in the remainder
        values[BLOCK + 1] = 9.0; // in a block
        assert_eq!(min_max(&values), (-1.5, 9.0));
    }

    #[test]
    fn finds_values_above_a_floor() {
        let mut values = vec![0.0f32; 40];
        assert!(!any_above(&values, 0.0));
        values[37] = 0.5;
        assert!(any_above(&values, 0.0));
        assert!(!any_above(&values, 0.5));
        values[3] = f32::NAN;
        assert!(!any_above(&values, 0.5));
        values[20] = 0.7;
        assert!(any_above(&values, 0.5));
    }
}
