//! Median and spread of repeated measurements.

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn spread(values: &[f64]) -> Spread {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
            n: 0,
        };
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    Spread {
        median,
        min: v[0],
        max: v[v.len() - 1],
        n: v.len(),
    }
}

/// `median [min–max]` with `digits` decimals; the median alone for one
/// sample, `–` for none.
pub fn fmt_spread(s: Spread, digits: usize) -> String {
    if s.n == 0 {
        return "–".into();
    }
    if s.n == 1 {
        return format!("{:.*}", digits, s.median);
    }
    format!(
        "{:.*} [{:.*}–{:.*}]",
        digits, s.median, digits, s.min, digits, s.max
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0,
                n: 3
            }
        );
        assert_eq!(spread(&[4.0, 1.0, 2.0, f64::NAN, 3.0]).median, 2.5);
        assert_eq!(spread(&[]).n, 0);
    }
}
