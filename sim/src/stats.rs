//! Statistics over seeds: mean, standard deviation, Student-t confidence intervals and Welch's
//! t-test, with the t distribution computed here (the regularised incomplete beta function by
//! Lentz's continued fraction, as in Numerical Recipes §6.4) rather than through a statistics
//! crate many times larger than these hundred lines.

/// Mean, sample standard deviation and the half-width of the 95% confidence interval of the
/// mean (Student t with n − 1 degrees of freedom) of some per-seed values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// `None` for fewer than two values.
    pub stddev: Option<f64>,
    /// `None` for fewer than two values.
    pub ci95_half_width: Option<f64>,
}

pub fn summarize(values: &[f64]) -> Summary {
    let n = values.len();
    let mean = mean(values);
    let stddev = variance(values).map(f64::sqrt);
    let ci95_half_width = stddev.map(|s| t_quantile(0.975, (n - 1) as f64) * s / (n as f64).sqrt());
    Summary {
        n,
        mean,
        stddev,
        ci95_half_width,
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// Sample variance (n − 1 in the denominator); `None` for fewer than two values.
fn variance(values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let m = mean(values);
    Some(values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64)
}

/// Welch's two-sided t-test of equal means: the p-value, or `None` when a side has fewer than
/// two values. Two sides without any spread have p = 1 when their means are equal and 0 when
/// they are not (the difference is exact).
pub fn welch_p(a: &[f64], b: &[f64]) -> Option<f64> {
    let (va, vb) = (variance(a)?, variance(b)?);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    let diff = mean(b) - mean(a);
    if se2 == 0.0 {
        return Some(if diff == 0.0 { 1.0 } else { 0.0 });
    }
    let t = diff / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    Some(t_two_sided_p(t, df))
}

/// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom (any real df > 0).
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return 1.0;
    }
    let x = df / (df + t * t);
    inc_beta(df / 2.0, 0.5, x)
}

/// P(T ≤ t) for Student's t with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = t_two_sided_p(t, df) / 2.0;
    if t > 0.0 { 1.0 - tail } else { tail }
}

/// The t with P(T ≤ t) = p, for 0 < p < 1, by bisection on [`t_cdf`] (60 halvings leave an
/// interval far below f64's resolution at these magnitudes).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while t_cdf(hi, df) < p && hi < 1e12 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// ln Γ(x) for x ≥ 0.5 (Lanczos, g = 7, nine terms: about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + G + 0.5;
    let a = C[0]
        + C[1..]
            .iter()
            .enumerate()
            .map(|(i, c)| c / (x + (i + 1) as f64))
            .sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function I_x(a, b).
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    // The continued fraction converges fast on this side of the mean; use the symmetry
    // I_x(a, b) = 1 − I_{1−x}(b, a) on the other.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

/// The continued fraction of I_x(a, b) by the modified Lentz method.
fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const ITERATIONS_MAX: u32 = 500;
    const EPSILON: f64 = 1e-16;
    const TINY: f64 = 1e-300;
    let not_tiny = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / not_tiny(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=ITERATIONS_MAX {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / not_tiny(1.0 + aa * d);
        c = not_tiny(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / not_tiny(1.0 + aa * d);
        c = not_tiny(1.0 + aa / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < EPSILON {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance * b.abs().max(1.0)
    }

    #[test]
    fn t_cdf_matches_closed_forms() {
        // df = 1 is Cauchy: 1/2 + atan(t)/π; df = 2: 1/2 + t / (2 √(t² + 2)).
        for t in [-30.0, -3.0, -1.0, -0.2, 0.0, 0.5, 1.0, 2.5, 10.0, 300.0] {
            let cauchy = 0.5 + f64::atan(t) / std::f64::consts::PI;
            assert!(close(t_cdf(t, 1.0), cauchy, 1e-12), "df 1, t {t}");
            let two = 0.5 + t / (2.0 * (t * t + 2.0).sqrt());
            assert!(close(t_cdf(t, 2.0), two, 1e-12), "df 2, t {t}");
        }
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        // Two-sided 95% critical values, and the values below, computed independently with
        // mpmath's regularised incomplete beta at 30 digits.
        for (df, t) in [
            (1.0, 12.706_204_736_174_705),
            (2.0, 4.302_652_729_749_464),
            (3.0, 3.182_446_305_283_71),
            (4.0, 2.776_445_105_197_794),
            (5.0, 2.570_581_835_636_316),
            (9.0, 2.262_157_162_798_206),
            (10.0, 2.228_138_851_986_275),
            (30.0, 2.042_272_456_301_238),
            (1000.0, 1.962_339_080_826_409),
        ] {
            let q = t_quantile(0.975, df);
            assert!(close(q, t, 1e-9), "df {df}: {q} vs {t}");
        }
        assert!(close(t_cdf(2.0, 5.0), 0.949_030_260_585_070_8, 1e-12));
        assert!(close(
            t_two_sided_p(2.0, 10.0),
            0.073_388_034_770_740_37,
            1e-10
        ));
    }

    #[test]
    fn welch_matches_a_worked_example() {
        // t = 2.39937, df = 8.73897 (Welch–Satterthwaite), p = 0.0407180272623 (mpmath).
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [3.0, 4.0, 5.0, 6.0, 8.0, 9.0];
        let p = welch_p(&a, &b).unwrap();
        assert!(close(p, 0.040_718_027_262_302_03, 1e-10), "{p}");
        assert_eq!(welch_p(&[1.0], &b), None);
        assert_eq!(welch_p(&[2.0, 2.0], &[2.0, 2.0]), Some(1.0));
        assert_eq!(welch_p(&[2.0, 2.0], &[3.0, 3.0]), Some(0.0));
    }

    #[test]
    fn summary_gives_a_student_t_interval() {
        let s = summarize(&[10.0, 12.0, 14.0]);
        assert_eq!(s.n, 3);
        assert!(close(s.mean, 12.0, 1e-15));
        assert!(close(s.stddev.unwrap(), 2.0, 1e-15));
        // t(0.975, 2) × 2 / √3
        let hw = 4.302_652_729_749_464 * 2.0 / 3.0_f64.sqrt();
        assert!(close(s.ci95_half_width.unwrap(), hw, 1e-9));
        assert_eq!(summarize(&[5.0]).ci95_half_width, None);
    }
}
