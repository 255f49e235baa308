//! The distributions the drift tests need: the standard normal's and chi-squared's upper tails
//! and the Kolmogorov distribution's, written out (no statistics crate), each accurate to well
//! under what a 5 % decision needs (see the tests).

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, nine terms; relative error about 1e-15).
pub fn ln_gamma(x: f64) -> f64 {
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
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// The regularised upper incomplete gamma function `Q(a, x) = Γ(a, x) / Γ(a)`.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        // P by its series, Q = 1 − P.
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..500 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - front * sum).clamp(0.0, 1.0)
    } else {
        // Q by its continued fraction (modified Lentz).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..500 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let step = d * c;
            h *= step;
            if (step - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (front * h).clamp(0.0, 1.0)
    }
}

/// `P(X ≥ x)` for a chi-squared variable with `df` degrees of freedom.
pub fn chi2_sf(x: f64, df: f64) -> f64 {
    gamma_q(df / 2.0, x / 2.0)
}

/// `P(Z ≥ z)` for a standard normal variable (the complementary error function by its
/// Chebyshev fit, fractional error below 1.2e-7).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ]
    .iter()
    .rev()
    .fold(0.0, |acc, c| acc * t + c);
    let value = t * (-x * x + poly).exp();
    if x >= 0.0 { value } else { 2.0 - value }
}

/// `P(K ≥ λ)` for the Kolmogorov distribution (the limit of `√n · D`).
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 0.3 {
        // The alternating series converges slowly here, and the tail is 1 to 1e-9.
        let pi = std::f64::consts::PI;
        let s: f64 = (1..=20)
            .map(|k| {
                let k = (2 * k - 1) as f64;
                (-(k * k) * pi * pi / (8.0 * lambda * lambda)).exp()
            })
            .sum();
        return (1.0 - (2.0 * pi).sqrt() / lambda * s).clamp(0.0, 1.0);
    }
    let mut sum = 0.0;
    for j in 1..=100 {
        let j = j as f64;
        let term = (-2.0 * j * j * lambda * lambda).exp();
        sum += if j as u64 % 2 == 1 { term } else { -term };
        if term < 1e-16 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) {
        assert!((a - b).abs() <= tolerance, "{a} vs {b}");
    }

    #[test]
    fn the_tails_match_scipy() {
        // scipy.stats.chi2.sf, norm.sf, kstwobign.sf.
        close(chi2_sf(7.5, 2.0), 0.023_517_745_856_009_114, 1e-12);
        close(chi2_sf(3.2, 5.0), 0.669_182_902_033_243_2, 1e-12);
        close(chi2_sf(40.0, 30.0), 0.104_864_281_107_984_68, 1e-12);
        close(normal_sf(1.96), 0.024_997_895_148_220_435, 1e-8);
        close(normal_sf(0.5), 0.308_537_538_725_986_9, 5e-8);
        close(normal_sf(3.5), 0.000_232_629_079_035_525, 1e-9);
        close(normal_sf(-1.96), 1.0 - 0.024_997_895_148_220_435, 1e-8);
        close(kolmogorov_sf(0.5), 0.963_945_243_664_875_1, 1e-10);
        close(kolmogorov_sf(1.0), 0.269_999_671_677_354_56, 1e-12);
        close(kolmogorov_sf(1.36), 0.049_485_876_755_377_876, 1e-12);
        close(kolmogorov_sf(0.1), 1.0, 1e-12);
        close(ln_gamma(5.0), 24f64.ln(), 1e-13);
        close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-13);
    }
}
