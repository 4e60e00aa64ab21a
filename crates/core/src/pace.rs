//! A token bucket: `rate` tokens a second, holding at most one second's worth,
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
}
