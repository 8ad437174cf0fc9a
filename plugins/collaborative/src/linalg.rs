//! Dense symmetric positive-definite inversion, the one piece of linear algebra EASE needs.
//!
//! Hand-written rather than pulled from a BLAS because it must compile to wasm32 without
//! system libraries; the loops are dot products over contiguous rows with several independent
//! accumulators, so LLVM vectorizes them natively and with WebAssembly SIMD.

/// Dot product of two equally long slices.
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut sum = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for k in chunks * 8..n {
        sum += a[k] * b[k];
    }
    sum
}

/// Inverts the symmetric positive-definite `n`x`n` row-major matrix `a` in place.
///
/// Cholesky (`a = L L^T`), then `L^-1` by forward substitution, then `a^-1 = L^-T L^-1`:
/// about n^3/2 multiply-adds. Returns `None` when `a` is not positive definite.
pub fn invert_spd(a: &mut [f64], n: usize) -> Option<()> {
    assert_eq!(a.len(), n * n);
    // 1. Cholesky, lower triangle of `a` becomes L (row-major, rows contiguous).
    for j in 0..n {
        let row_j: Vec<f64> = a[j * n..j * n + j].to_vec();
        let diagonal = a[j * n + j] - dot(&row_j, &row_j);
        if diagonal <= 0.0 || !diagonal.is_finite() {
            return None;
        }
        let pivot = diagonal.sqrt();
        a[j * n + j] = pivot;
        // Rows above j are finished; fill column j of the rows below from row j.
        for i in j + 1..n {
            let row_i = &mut a[i * n..i * n + n];
            row_i[j] = (row_i[j] - dot(&row_i[..j], &row_j)) / pivot;
        }
    }
    // 2. U = (L^-1)^T, stored row-major: row j of U is column j of L^-1, non-zero from j on.
    let mut u = vec![0.0f64; n * n];
    let mut column = vec![0.0f64; n];
    for j in 0..n {
        // Solve L x = e_j; x[i] = 0 for i < j.
        column[..j].iter_mut().for_each(|x| *x = 0.0);
        for i in j..n {
            let row_i = &a[i * n..i * n + i];
            let rhs = if i == j { 1.0 } else { 0.0 };
            column[i] = (rhs - dot(&row_i[j..i], &column[j..i])) / a[i * n + i];
        }
        u[j * n + j..j * n + n].copy_from_slice(&column[j..n]);
    }
    // 3. a^-1[i][j] = sum_{k >= max(i,j)} U[i][k] U[j][k].
    for i in 0..n {
        for j in 0..=i {
            let value = dot(&u[i * n + i..i * n + n], &u[j * n + i..j * n + n]);
            a[i * n + j] = value;
            a[j * n + i] = value;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_times_matrix_is_identity() {
        let n = 13;
        // A random-ish SPD matrix: M^T M + n I.
        let m: Vec<f64> = (0..n * n)
            .map(|k| ((k * 37 % 17) as f64 - 8.0) / 5.0)
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| m[k * n + i] * m[k * n + j]).sum::<f64>();
            }
            a[i * n + i] += n as f64;
        }
        let original = a.clone();
        invert_spd(&mut a, n).unwrap();
        for i in 0..n {
            for j in 0..n {
                let product: f64 = (0..n).map(|k| original[i * n + k] * a[k * n + j]).sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((product - expected).abs() < 1e-9, "({i},{j}) = {product}");
            }
        }
    }

    #[test]
    fn refuses_a_matrix_that_is_not_positive_definite() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(invert_spd(&mut a, 2).is_none());
    }
}
