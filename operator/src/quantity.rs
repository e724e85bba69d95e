//! Just enough of Kubernetes quantities to compare a tenant's overrides with its plan and
//! to multiply them into a quota: `k8s-openapi`'s `Quantity` is only the string.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity in billionths of its unit (nano-cores, nano-bytes): every suffix from `n`
/// to `Ei` is a whole number of these, and the largest quantity the schema allows
/// (32 characters) still fits in an i128 for the values a tenant can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Amount(i128);

const NANO_DIGITS: i32 = 9;

impl Amount {
    /// Parses a quantity (`250m`, `1.5Gi`, `2`, `1e3`); `None` if it is not one or is
    /// negative. Fractions finer than a billionth round up, as Kubernetes does.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let number_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(number_end);
        let number = number.strip_prefix('+').unwrap_or(number);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty()
            || !(whole.bytes().chain(fraction.bytes())).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let (exponent10, binary_shift) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            _ => {
                // A decimal exponent: e3, E-2, e+6.
                let exponent = suffix
                    .strip_prefix('e')
                    .or_else(|| suffix.strip_prefix('E'))?;
                (exponent.parse::<i32>().ok().filter(|e| e.abs() <= 30)?, 0)
            }
        };
        let mut digits: i128 = 0;
        for b in whole.bytes().chain(fraction.bytes()) {
            digits = digits.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
        }
        let scaled = digits.checked_mul(1i128.checked_shl(binary_shift)?)?;
        let exponent = exponent10 + NANO_DIGITS - i32::try_from(fraction.len()).ok()?;
        let nanos = if exponent >= 0 {
            scaled.checked_mul(10i128.checked_pow(exponent.unsigned_abs())?)?
        } else {
            let divisor = 10i128.checked_pow(exponent.unsigned_abs())?;
            scaled.checked_add(divisor - 1)? / divisor
        };
        Some(Self(nanos))
    }

    /// This amount `times` over.
    pub(crate) fn times(self, times: u32) -> Option<Self> {
        self.0.checked_mul(i128::from(times)).map(Self)
    }

    /// The shortest exact quantity string: a whole number (with the largest binary suffix
    /// that divides it, so memory reads as `512Mi`), else millis, else billionths.
    pub(crate) fn to_quantity(self) -> Quantity {
        const UNIT: i128 = 1_000_000_000;
        let text = if self.0 % UNIT == 0 {
            let units = self.0 / UNIT;
            let binary = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"]
                .iter()
                .zip([60u32, 50, 40, 30, 20, 10])
                .find(|&(_, shift)| units != 0 && units % (1i128 << shift) == 0);
            match binary {
                Some((suffix, shift)) => format!("{}{suffix}", units >> shift),
                None => units.to_string(),
            }
        } else if self.0 % 1_000_000 == 0 {
            format!("{}m", self.0 / 1_000_000)
        } else {
            format!("{}n", self.0)
        };
        Quantity(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanos(text: &str) -> i128 {
        Amount::parse(text)
            .unwrap_or_else(|| panic!("{text} parses"))
            .0
    }

    #[test]
    fn reads_every_suffix() {
        assert_eq!(nanos("250m"), 250_000_000);
        assert_eq!(nanos("1"), 1_000_000_000);
        assert_eq!(nanos("0.5"), 500_000_000);
        assert_eq!(nanos(".5"), 500_000_000);
        assert_eq!(nanos("+2"), 2_000_000_000);
        assert_eq!(nanos("100n"), 100);
        assert_eq!(nanos("3u"), 3_000);
        assert_eq!(nanos("1k"), 1_000 * 1_000_000_000);
        assert_eq!(nanos("1G"), 1_000_000_000 * 1_000_000_000);
        assert_eq!(nanos("128Mi"), (128 << 20) * 1_000_000_000);
        assert_eq!(nanos("1.5Gi"), (3 << 29) * 1_000_000_000);
        assert_eq!(nanos("1e3"), 1_000 * 1_000_000_000);
        assert_eq!(nanos("1E-3"), 1_000_000);
        assert_eq!(nanos("2E"), 2 * 10i128.pow(18) * 1_000_000_000);
        assert_eq!(nanos("1Ei"), (1i128 << 60) * 1_000_000_000);
        // Finer than a billionth rounds up.
        assert_eq!(nanos("0.0000000001"), 1);
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in [
            "", "m", "-1", "1.2.3", "1Zi", "1e", "1e99", "ten", "1 Gi", "1gi",
        ] {
            assert_eq!(Amount::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn compares_across_suffixes() {
        assert!(Amount::parse("1Gi") > Amount::parse("1G"));
        assert!(Amount::parse("1500m") > Amount::parse("1"));
        assert_eq!(Amount::parse("1024Mi"), Amount::parse("1Gi"));
    }

    #[test]
    fn writes_the_shortest_exact_form() {
        let write = |text: &str, times: u32| {
            Amount::parse(text)
                .unwrap()
                .times(times)
                .unwrap()
                .to_quantity()
                .0
        };
        assert_eq!(write("256Mi", 2), "512Mi");
        assert_eq!(write("512Mi", 2), "1Gi");
        assert_eq!(write("500m", 2), "1");
        assert_eq!(write("250m", 3), "750m");
        assert_eq!(write("1", 4), "4");
        assert_eq!(write("1G", 1), "1000000000");
        assert_eq!(write("0", 3), "0");
        assert_eq!(write("100n", 1), "100n");
    }
}
