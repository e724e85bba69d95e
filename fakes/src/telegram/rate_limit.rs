//! Token buckets standing in for Telegram's flood control (see [`super::RateLimits`]).

use std::collections::HashMap;

use tokio::time::Instant;

use super::RateLimits;

/// One bot's buckets: a bot-wide one and one per chat.
#[derive(Debug)]
pub(super) struct RateLimiter {
    limits: RateLimits,
    global: TokenBucket,
    per_chat: HashMap<i64, TokenBucket>,
}

impl RateLimiter {
    pub(super) fn new(limits: RateLimits) -> RateLimiter {
        RateLimiter {
            limits,
            global: TokenBucket::full(limits.global_per_sec, limits.global_burst, Instant::now()),
            per_chat: HashMap::new(),
        }
    }

    /// Takes a token from the chat's bucket and the bot's, or — taking none — answers the
    /// whole seconds (at least 1) until both hold one, Telegram's `retry_after`.
    pub(super) fn acquire(&mut self, chat_id: i64, now: Instant) -> Result<(), u32> {
        let limits = self.limits;
        let chat = self.per_chat.entry(chat_id).or_insert_with(|| {
            TokenBucket::full(limits.per_chat_per_sec, limits.per_chat_burst, now)
        });
        chat.refill(now);
        self.global.refill(now);
        let wait_secs = chat.secs_until_token().max(self.global.secs_until_token());
        if wait_secs > 0.0 {
            // A float-to-int `as` saturates, so a bucket that never refills asks for u32::MAX.
            return Err((wait_secs.ceil() as u32).max(1));
        }
        chat.tokens -= 1.0;
        self.global.tokens -= 1.0;
        Ok(())
    }
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    fn full(per_sec: u32, burst: u32, now: Instant) -> TokenBucket {
        let capacity = f64::from(burst.max(1));
        TokenBucket {
            tokens: capacity,
            capacity,
            per_sec: f64::from(per_sec),
            refilled_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.refilled_at = now;
    }

    fn secs_until_token(&self) -> f64 {
        if self.tokens >= 1.0 {
            0.0
        } else {
            (1.0 - self.tokens) / self.per_sec
        }
    }
}
