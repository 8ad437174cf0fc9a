//! GrowthBook's assignment algorithm, as its reference JavaScript SDK implements it, so that
//! any GrowthBook SDK (or anyone with this page) can recompute which arm a user is in.
//!
//! 1. `hash(seed, user_id, 2)`: FNV-1a 32 over the UTF-16 code units of `seed + user_id`, then
//!    FNV-1a 32 again over the decimal string of that number, modulo 10,000, divided by
//!    10,000: a number in [0, 1). (Version 1: FNV-1a 32 of `user_id + seed`, modulo 1,000.)
//!    Hashing UTF-16 code units (not UTF-8 bytes) is what the reference SDK does; IDs outside
//!    ASCII bucket like there and unlike SDKs that hash bytes.
//! 2. `bucket_ranges(n, coverage, weights)`: arm i owns `[c_i, c_i + coverage * w_i)` where
//!    `c_i` is the sum of the weights before it, so raising coverage only widens each arm's
//!    range and never moves a user from one arm to another. Weights that do not sum to 1
//!    (within 0.01) or do not match `n` fall back to equal weights.
//! 3. `choose_variation(hash, ranges)`: the arm whose range holds the hash, or none (the user
//!    is outside the coverage).
//! 4. Namespaces: `in_namespace(user_id, (name, start, end))` is
//!    `start <= hash("__" + name, user_id, 1) < end`; experiments whose namespace ranges do
//!    not overlap never share a user.

/// FNV-1a, 32 bits, over UTF-16 code units (JavaScript's `charCodeAt`) of the
/// concatenation of `parts`. Hashing the parts in turn avoids building the string: this runs
/// on every request.
fn fnv1a32(parts: &[&str]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for part in parts {
        for unit in part.encode_utf16() {
            hash ^= u32::from(unit);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// The decimal digits of `n` (JavaScript's `String(n)` for an unsigned integer).
fn decimal(mut n: u32, buffer: &mut [u8; 10]) -> &str {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[start..]).unwrap_or("0")
}

/// GrowthBook's hash of `value` under the seed `seed_prefix + seed`, in [0, 1); `None` for an
/// unknown version.
fn hash_prefixed(seed_prefix: &str, seed: &str, value: &str, version: u32) -> Option<f64> {
    match version {
        1 => Some(f64::from(fnv1a32(&[value, seed_prefix, seed]) % 1000) / 1000.0),
        2 => {
            let first = fnv1a32(&[seed_prefix, seed, value]);
            let mut digits = [0; 10];
            let second = fnv1a32(&[decimal(first, &mut digits)]);
            Some(f64::from(second % 10_000) / 10_000.0)
        }
        _ => None,
    }
}

/// GrowthBook's hash of `value` under `seed`, in [0, 1); `None` for an unknown version.
pub fn hash(seed: &str, value: &str, version: u32) -> Option<f64> {
    hash_prefixed("", seed, value, version)
}

/// `n` equal weights summing to 1 (none for `n` ≤ 0).
pub fn equal_weights(n: i64) -> Vec<f64> {
    if n <= 0 {
        return Vec::new();
    }
    vec![1.0 / n as f64; n as usize]
}

/// Each arm's `[start, end)` hash range for `n` arms at `coverage` (clamped to [0, 1]).
pub fn bucket_ranges(n: i64, coverage: f64, weights: Option<&[f64]>) -> Vec<(f64, f64)> {
    let coverage = coverage.clamp(0.0, 1.0);
    let equal = equal_weights(n);
    let mut weights = match weights {
        Some(w) if w.len() as i64 == n => w.to_vec(),
        _ => equal.clone(),
    };
    let total: f64 = weights.iter().sum();
    if !(0.99..=1.01).contains(&total) {
        weights = equal;
    }
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|w| {
            let start = cumulative;
            cumulative += w;
            (start, start + coverage * w)
        })
        .collect()
}

/// The arm whose range holds `hash`, if any.
pub fn choose_variation(hash: f64, ranges: &[(f64, f64)]) -> Option<usize> {
    ranges
        .iter()
        .position(|&(start, end)| hash >= start && hash < end)
}

/// Whether `user_id` falls in the namespace `(name, start, end)`.
pub fn in_namespace(user_id: &str, (name, start, end): (&str, f64, f64)) -> bool {
    hash_prefixed("__", name, user_id, 1).is_some_and(|n| n >= start && n < end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    const CASES: &str = include_str!("../../../tests/conformance/growthbook-cases.json");
    const CASES_SHA256: &str = "1422cb1bfc6f6035f78aa21e5181ab91f758e37f1688e2c6142aface7d953886";

    fn section(name: &str) -> Vec<Value> {
        let cases: Value = serde_json::from_str(CASES).unwrap();
        let list = cases[name].as_array().unwrap().clone();
        assert!(!list.is_empty(), "no {name} cases");
        list
    }

    /// The cases write fractions rounded to 8 decimals (1/3 is 0.33333333).
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-8
    }

    fn ranges(value: &Value) -> Vec<(f64, f64)> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_f64().unwrap(), r[1].as_f64().unwrap()))
            .collect()
    }

    #[test]
    fn the_vendored_cases_are_growthbooks() {
        let digest = Sha256::digest(CASES.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex, CASES_SHA256,
            "tests/conformance/growthbook-cases.json changed"
        );
    }

    #[test]
    fn growthbook_conformance() {
        let mut run = 0;
        for case in section("hash") {
            let value = match &case[1] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let version = case[2].as_u64().unwrap() as u32;
            let got = hash(case[0].as_str().unwrap(), &value, version);
            match case[3].as_f64() {
                Some(expected) => {
                    assert!(got.is_some_and(|g| close(g, expected)), "{case}: {got:?}")
                }
                None => assert_eq!(got, None, "{case}"),
            }
            run += 1;
        }
        for case in section("getBucketRange") {
            let args = &case[1];
            let weights: Option<Vec<f64>> = args[2]
                .as_array()
                .map(|w| w.iter().map(|x| x.as_f64().unwrap()).collect());
            let got = bucket_ranges(
                args[0].as_i64().unwrap(),
                args[1].as_f64().unwrap_or(1.0),
                weights.as_deref(),
            );
            let expected = ranges(&case[2]);
            assert_eq!(got.len(), expected.len(), "{case}");
            for (g, e) in got.iter().zip(&expected) {
                assert!(close(g.0, e.0) && close(g.1, e.1), "{case}: {got:?}");
            }
            run += 1;
        }
        for case in section("chooseVariation") {
            let got = choose_variation(case[1].as_f64().unwrap(), &ranges(&case[2]));
            let expected = case[3].as_i64().unwrap();
            assert_eq!(got.map_or(-1, |i| i as i64), expected, "{case}");
            run += 1;
        }
        for case in section("inNamespace") {
            let namespace = &case[2];
            let got = in_namespace(
                case[1].as_str().unwrap(),
                (
                    namespace[0].as_str().unwrap(),
                    namespace[1].as_f64().unwrap(),
                    namespace[2].as_f64().unwrap(),
                ),
            );
            assert_eq!(got, case[3].as_bool().unwrap(), "{case}");
            run += 1;
        }
        for case in section("getEqualWeights") {
            let got = equal_weights(case[0].as_i64().unwrap());
            let expected: Vec<f64> = case[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), expected.len(), "{case}");
            assert!(
                got.iter().zip(&expected).all(|(g, e)| close(*g, *e)),
                "{case}"
            );
            run += 1;
        }
        eprintln!("GrowthBook conformance: {run} cases run, all passed");
        assert_eq!(run, 15 + 13 + 13 + 16 + 6);
    }

    #[test]
    fn raising_coverage_never_moves_a_user_between_arms() {
        for user in 0..2_000 {
            let n = hash("exp", &user.to_string(), 2).unwrap();
            let low = choose_variation(n, &bucket_ranges(2, 0.3, Some(&[0.5, 0.5])));
            let high = choose_variation(n, &bucket_ranges(2, 0.9, Some(&[0.5, 0.5])));
            if let Some(arm) = low {
                assert_eq!(high, Some(arm), "user {user}");
            }
        }
    }
}
