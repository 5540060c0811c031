//! Time as the machines see it: microseconds since the `Network`'s epoch, passed in by the caller.
//!
//! The core never reads a clock (DESIGN §3.2): both backends read tokio's clock, which turmoil drives
//! in simulation, and convert it to an [`Instant`] before every [`handle`](crate::TcpMachine::handle),
//! or hand over a function that reads it, which the TCP machine calls only when a transition needs
//! the time ([`handle_lazy`](crate::TcpMachine::handle_lazy)).

use core::fmt;
use core::ops::{Add, Sub};
use std::time::Duration;

/// A point in time: microseconds since the epoch of the `Network` that drives the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct Instant(u64);

impl Instant {
    /// The epoch itself.
    pub const ZERO: Instant = Instant(0);

    /// The instant `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Instant(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at `u64::MAX` microseconds (about 584,000 years): a timer that far away never fires.
    fn add(self, rhs: Duration) -> Instant {
        let micros = u64::try_from(rhs.as_micros()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(micros))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

/// An optional [`Instant`] in 8 bytes, where `Option<Instant>` takes 16: a machine keeps several,
/// and the glue's per-socket allocation must stay in the allocator's fast size classes (issue #6).
/// `u64::MAX` microseconds stands for "none"; a deadline that far (about 584,000 years, only a
/// saturated sum reaches it) is kept one microsecond earlier, which no clock ever reaches either.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeadlineSlot(u64);

impl DeadlineSlot {
    /// No deadline.
    pub const NONE: DeadlineSlot = DeadlineSlot(u64::MAX);

    /// A deadline at `at`.
    pub fn at(at: Instant) -> DeadlineSlot {
        DeadlineSlot(at.0.min(u64::MAX - 1))
    }

    /// The deadline, if there is one.
    pub fn get(self) -> Option<Instant> {
        (self != DeadlineSlot::NONE).then_some(Instant(self.0))
    }

    /// Whether there is a deadline and `now` has reached it.
    pub fn is_due(self, now: Instant) -> bool {
        self != DeadlineSlot::NONE && self.0 <= now.0
    }
}

impl fmt::Debug for DeadlineSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_saturates_instead_of_overflowing() {
        let far = Instant::from_micros(u64::MAX - 1) + Duration::from_secs(10);
        assert_eq!(far.as_micros(), u64::MAX);
        assert_eq!(Instant::ZERO + Duration::MAX, Instant::from_micros(u64::MAX));
    }

    #[test]
    fn a_deadline_is_an_optional_instant_in_eight_bytes() {
        assert_eq!(std::mem::size_of::<DeadlineSlot>(), 8);
        assert_eq!(DeadlineSlot::NONE.get(), None);
        let at = Instant::from_micros(7);
        assert_eq!(DeadlineSlot::at(at).get(), Some(at));
        assert!(DeadlineSlot::at(at).is_due(at) && !DeadlineSlot::at(at).is_due(Instant::from_micros(6)));
        assert!(!DeadlineSlot::NONE.is_due(Instant::from_micros(u64::MAX)));
        // A saturated deadline stays a deadline, one microsecond earlier.
        let far = DeadlineSlot::at(Instant::ZERO + Duration::MAX);
        assert_eq!(far.get(), Some(Instant::from_micros(u64::MAX - 1)));
    }

    #[test]
    fn display_is_seconds_with_micros() {
        assert_eq!(Instant::from_micros(1_500_000).to_string(), "1.500000s");
        assert_eq!(Instant::from_micros(5) - Instant::from_micros(9), Duration::ZERO);
    }
}
