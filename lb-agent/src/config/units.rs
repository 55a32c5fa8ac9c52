//! Numbers that carry their own range: an origin or pool `Weight` (0 to 1) and a monitor's
//! `Seconds`. Each check names the field and the fix, as every config error does.

use super::validate::FieldErrors;
use std::time::Duration;

use super::defaults::{MAX_PROBE_SECS, MIN_PROBE_SECS};

/// A weight between 0 and 1; 0 takes no new connections.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Weight(f64);

impl Weight {
    /// The full weight, every weight's default.
    pub const ONE: Self = Self(1.0);

    /// `v` if it is a finite number between 0 and 1.
    pub fn new(v: f64) -> Option<Self> {
        (v.is_finite() && (0.0..=1.0).contains(&v)).then_some(Self(v))
    }

    pub fn get(self) -> f64 {
        self.0
    }

    /// `v` as the weight in `field`, or an error whose fix ends with `why`
    /// (e.g. `" (0 drains the origin)"`).
    pub(super) fn check(v: f64, field: &str, why: &str, errors: &mut FieldErrors) -> Option<Self> {
        let w = Self::new(v);
        if w.is_none() {
            errors.invalid(
                field,
                format!("{v} is out of range"),
                format!("use a number between 0 and 1{why}"),
            );
        }
        w
    }
}

/// A monitor's timeout or interval: `MIN_PROBE_SECS` to one day, fractions allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(Duration);

impl Seconds {
    /// `v` seconds if they are in range.
    pub fn new(v: f64) -> Option<Self> {
        (MIN_PROBE_SECS..=MAX_PROBE_SECS)
            .contains(&v)
            .then(|| Self(Duration::from_secs_f64(v)))
    }

    pub fn get(self) -> Duration {
        self.0
    }

    /// `v` as the seconds in `field`, or an error.
    pub(super) fn check(v: f64, field: &str, errors: &mut FieldErrors) -> Option<Self> {
        let s = Self::new(v);
        if s.is_none() {
            errors.invalid(
                field,
                format!("{v} is out of range"),
                format!("use seconds between {MIN_PROBE_SECS} and {MAX_PROBE_SECS} (fractions allowed, e.g. 0.25)"),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_finite_and_between_0_and_1() {
        assert_eq!(Weight::new(0.0).map(Weight::get), Some(0.0));
        assert_eq!(Weight::new(1.0).map(Weight::get), Some(1.0));
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(Weight::new(bad), None, "{bad}");
        }
        let mut errors = FieldErrors::default();
        assert_eq!(Weight::check(2.0, "w", " (why)", &mut errors), None);
        assert_eq!(
            errors.0,
            ["w: 2 is out of range; use a number between 0 and 1 (why)"]
        );
    }

    #[test]
    fn seconds_from_the_minimum_to_a_day() {
        assert_eq!(
            Seconds::new(0.25).map(Seconds::get),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            Seconds::new(MAX_PROBE_SECS).map(Seconds::get),
            Some(Duration::from_secs(86_400))
        );
        for bad in [0.01, 86_401.0, -1.0, f64::NAN] {
            assert_eq!(Seconds::new(bad), None, "{bad}");
        }
        let mut errors = FieldErrors::default();
        assert_eq!(Seconds::check(0.0, "t", &mut errors), None);
        assert_eq!(
            errors.0,
            ["t: 0 is out of range; use seconds between 0.05 and 86400 (fractions allowed, e.g. 0.25)"]
        );
    }
}
