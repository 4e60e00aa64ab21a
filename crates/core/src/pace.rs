//! Pacing. A token bucket: `rate` tokens a second, holding at most one second's worth,
//! refilled from the monotonic `now_ms` the caller passes. Spending may go into
//! debt; nothing more is spent until it is paid back.

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    refilled_ms: u64,
}

impl Bucket {
    /// A full bucket of `rate` tokens a second at `now_ms`.
    pub fn new(rate: u64, now_ms: u64) -> Bucket {
        Bucket { rate: rate as f64, tokens: rate as f64, refilled_ms: now_ms }
    }

    /// Add the tokens earned since the last refill.
    pub fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        self.tokens = (self.tokens + self.rate * elapsed as f64 / 1000.0).min(self.rate);
    }

    /// Tokens available now (negative: in debt).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// Take `n` tokens, into debt if need be.
    pub fn spend(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// Ms until the debt is paid (0: not in debt; `u64::MAX` at rate 0).
    pub fn wait_ms(&self) -> u64 {
        match self.tokens {
            t if t >= 0.0 => 0,
            _ if self.rate <= 0.0 => u64::MAX,
            t => (-t / self.rate * 1000.0).ceil() as u64,
        }
    }
}

/// Two buckets, over key states and their bytes, and what they let through: the
/// pace of one node's anti-entropy traffic ([`crate::antientropy`]).
#[derive(Clone, Debug)]
pub struct Pace {
    keys: Bucket,
    bytes: Bucket,
    keys_moved: u64,
    bytes_moved: u64,
}

impl Pace {
    /// Full buckets of `keys_per_s` states and `bytes_per_s` bytes a second (at least one each).
    pub fn new(keys_per_s: u64, bytes_per_s: u64, now_ms: u64) -> Pace {
        Pace {
            keys: Bucket::new(keys_per_s.max(1), now_ms),
            bytes: Bucket::new(bytes_per_s.max(1), now_ms),
            keys_moved: 0,
            bytes_moved: 0,
        }
    }

    /// Add what both buckets earned since the last refill.
    pub fn refill(&mut self, now_ms: u64) {
        self.keys.refill(now_ms);
        self.bytes.refill(now_ms);
    }

    /// Ms until both buckets are out of debt.
    pub fn wait_ms(&self) -> u64 {
        self.keys.wait_ms().max(self.bytes.wait_ms())
    }

    /// States and bytes that may go out now: at least one of each, so every round
    /// makes progress, and at most `keys_max` and `bytes_max`.
    pub fn allowance(&self, keys_max: usize, bytes_max: u64) -> (usize, u64) {
        ((self.keys.tokens().max(1.0) as usize).min(keys_max), (self.bytes.tokens().max(1.0) as u64).min(bytes_max))
    }

    /// Count `keys` states of `bytes` bytes moved, into debt if need be.
    pub fn charge(&mut self, keys: u64, bytes: u64) {
        self.keys.spend(keys as f64);
        self.bytes.spend(bytes as f64);
        self.keys_moved += keys;
        self.bytes_moved += bytes;
    }

    /// States and bytes moved so far.
    pub fn moved(&self) -> (u64, u64) {
        (self.keys_moved, self.bytes_moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_to_one_second_and_waits_out_debt() {
        let mut b = Bucket::new(1000, 0);
        b.spend(1500.0);
        assert_eq!(b.wait_ms(), 500);
        b.refill(250);
        assert_eq!(b.tokens(), -250.0);
        b.refill(10_000);
        assert_eq!(b.tokens(), 1000.0, "capped at one second");
        assert_eq!(Bucket::new(0, 0).tokens(), 0.0);
    }

    #[test]
    fn a_pace_lets_one_state_through_in_debt_and_counts_what_moved() {
        let mut p = Pace::new(10, 1000, 0);
        assert_eq!(p.allowance(1024, 1 << 20), (10, 1000));
        p.charge(30, 100);
        assert_eq!(p.wait_ms(), 2000, "20 states in debt at 10 a second");
        assert_eq!(p.allowance(1024, 1 << 20), (1, 900), "at least one state");
        p.refill(2000);
        assert_eq!(p.wait_ms(), 0);
        assert_eq!(p.moved(), (30, 100));
    }
}
