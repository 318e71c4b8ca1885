//! Money: exact integer micro-dollars, so sums over a ledger are exact.

use std::fmt;

/// An amount of US dollars, in micro-dollars (1 USD = 1,000,000).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(pub u64);

impl Usd {
    pub const ZERO: Usd = Usd(0);

    /// From a configured dollar amount (validated finite and non-negative at startup).
    pub fn from_dollars(d: f64) -> Self {
        Self((d * 1_000_000.0).round().max(0.0) as u64)
    }

    pub fn micros(self) -> u64 {
        self.0
    }

    pub fn as_dollars(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }
}

impl std::ops::Add for Usd {
    type Output = Usd;
    fn add(self, rhs: Usd) -> Usd {
        Usd(self.0.saturating_add(rhs.0))
    }
}

impl std::ops::Mul<u64> for Usd {
    type Output = Usd;
    fn mul(self, rhs: u64) -> Usd {
        Usd(self.0.saturating_mul(rhs))
    }
}

/// Shortest exact decimal: `0.04`, `0.005`, `1.2`, `0`.
impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if frac == 0 {
            return write!(f, "{whole}");
        }
        // The six decimals without their trailing zeros, written without a temporary string.
        let (mut frac, mut width) = (frac, 6);
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        write!(f, "{whole}.{frac:0width$}")
    }
}
