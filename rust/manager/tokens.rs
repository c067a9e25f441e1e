//! Tokens: handed out in sequence from 1 (0 names the wake-up no-ops), each the key of one
//! operation in the pending table; an SQE's user_data carries its token and the index of
//! the part of the operation it is.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::RingManager;

/// Enough bits to number the parts of a write spread over every buffer of the largest pool.
pub(super) const PART_BITS: u32 = 16;

pub(super) const PART_MASK: u64 = (1 << PART_BITS) - 1;

/// The token of the no-ops that wake a sleeping waiter, and of the cancellations of
/// `RingManager::cancel`: nobody's operation (operations' tokens start at 1).
pub(super) const WAKE_TOKEN: u64 = 0;

/// The user data of a cancellation SQE: under the wake token, so its CQE is nobody's.
pub(super) const CANCEL_USER_DATA: u64 = WAKE_TOKEN << PART_BITS | 1;

/// Tokens are handed out in sequence, so a multiplicative hash spreads them well and costs
/// one multiply instead of SipHash on the hot path.
#[derive(Default)]
pub struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type TokenMap<V> = HashMap<u64, V, BuildHasherDefault<TokenHasher>>;

impl RingManager {
    pub(super) fn take_token(&mut self) -> u64 {
        if let Some(token) = self.reserved_next.take() {
            return token;
        }
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// The token the next `reserve_token` returns.
    pub fn peek_token(&self) -> u64 {
        self.reserved_next.unwrap_or(self.next_token)
    }

    /// Makes the next operation placed take `token`, reserved earlier, instead of a new
    /// one: an operation accepted while it had no room (the backend's submission queue)
    /// keeps the token its caller was given. `None` cancels it when the operation was not
    /// placed after all.
    pub fn place_next_as(&mut self, token: Option<u64>) {
        self.reserved_next = token;
    }

    /// Reserves a token for a datasync that the backend holds back and issues later with
    /// `push_datasync`.
    pub fn reserve_token(&mut self) -> u64 {
        self.take_token()
    }
}
