//! Link profiles and the fault specifications the harness applies to a directed link.

use std::time::Duration;

use crate::rng::SimRng;

/// The latency of a link between two hosts.
///
/// TCP latency is turmoil's (the harness configures turmoil with this profile); UDP between
/// library sockets is delivered by the adapter, which draws from the same distribution:
/// `min + floor((max − min) in ms × Exp(5))` ms, capped at `max` (turmoil 0.7.2's formula).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkProfile {
    min: Duration,
    max: Duration,
}

impl LinkProfile {
    /// Every message takes exactly `latency` (no natural reordering): for differential runs and
    /// exact-time tests.
    pub const fn fixed(latency: Duration) -> LinkProfile {
        LinkProfile { min: latency, max: latency }
    }

    /// Latency between `min` and `max` (swapped if given the wrong way round), exponentially
    /// distributed towards `min` as turmoil's.
    pub fn range(min: Duration, max: Duration) -> LinkProfile {
        if min <= max {
            LinkProfile { min, max }
        } else {
            LinkProfile { min: max, max: min }
        }
    }

    /// The shortest latency.
    pub fn min_latency(&self) -> Duration {
        self.min
    }

    /// The longest latency.
    pub fn max_latency(&self) -> Duration {
        self.max
    }

    /// Whether every message takes the same time.
    pub fn is_fixed(&self) -> bool {
        self.min == self.max
    }

    /// One latency draw (no draw for a fixed profile).
    pub(crate) fn sample(&self, rng: &mut SimRng) -> Duration {
        if self.is_fixed() {
            return self.min;
        }
        let mult = rng.exponential(5.0);
        let range = (self.max - self.min).as_millis() as f64;
        let extra = Duration::from_millis((range * mult) as u64);
        (self.min + extra).min(self.max)
    }
}

impl Default for LinkProfile {
    /// turmoil's default: 0 to 100 ms.
    fn default() -> Self {
        LinkProfile { min: Duration::ZERO, max: Duration::from_millis(100) }
    }
}

/// TCP segment loss on a directed link, as applications see it: each loss costs one
/// retransmission timeout (200 ms, doubling, capped at 120 s); 15 consecutive losses of one
/// segment end the connection with `TimedOut` on both ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TcpLoss {
    /// No loss (the default; clears an earlier setting).
    None,
    /// The next data or FIN segment sent over the link is lost this many times, then delivered
    /// (after `0.2 s × (2^k − 1)` of back-off for k ≤ 10). 15 or more: the connection times out.
    Times(u32),
    /// Every transmission (data, FIN, SYN, keep-alive probe) is lost with this probability,
    /// drawn from the stream `("tcp-loss", link)`.
    Rate(f64),
}

/// UDP impairments on a directed link between library sockets. Every field defaults to off;
/// each draw comes from its own stream (`"udp-loss"`, `"udp-dup"`, `"udp-reorder"`,
/// `"udp-jitter"`, per link), so enabling one does not change the others' draws.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UdpImpairment {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice (the copy arrives right after it).
    pub duplicate: f64,
    /// Probability that a datagram is held back by `reorder_delay`, so later ones overtake it.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Extra delay of every datagram.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` for every datagram.
    pub jitter: Duration,
}

impl UdpImpairment {
    /// Whether any impairment is on.
    pub fn is_none(&self) -> bool {
        *self == UdpImpairment::default()
    }
}

/// The state of one direction of a link (from, to), consulted by every adapter timer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DirLink {
    /// Messages from → to are lost (TCP: retransmitted until repair or the budget runs out).
    pub(crate) partitioned: bool,
    /// Forced losses for the next segment (`TcpLoss::Times`), taken by the first segment sent.
    pub(crate) tcp_times: Option<u32>,
    /// Loss probability per TCP transmission.
    pub(crate) tcp_rate: f64,
    /// UDP impairments.
    pub(crate) udp: UdpImpairment,
}

impl Default for DirLink {
    fn default() -> Self {
        DirLink { partitioned: false, tcp_times: None, tcp_rate: 0.0, udp: UdpImpairment::default() }
    }
}

impl DirLink {
    /// Nothing can happen to a TCP segment here: the adapter may write straight through.
    pub(crate) fn tcp_clean(&self) -> bool {
        !self.partitioned && self.tcp_times.is_none() && self.tcp_rate <= 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fixed_profile_never_draws() {
        let mut rng = SimRng::from_seed(3);
        let before = rng.clone();
        let p = LinkProfile::fixed(Duration::from_millis(7));
        assert_eq!(p.sample(&mut rng), Duration::from_millis(7));
        assert_eq!(rng, before);
    }

    #[test]
    fn test_range_profile_within_bounds() {
        let mut rng = SimRng::from_seed(3);
        let p = LinkProfile::range(Duration::from_millis(50), Duration::from_millis(10));
        assert_eq!(
            (p.min_latency(), p.max_latency()),
            (Duration::from_millis(10), Duration::from_millis(50))
        );
        for _ in 0..1000 {
            let d = p.sample(&mut rng);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(50), "{d:?}");
        }
    }
}
