//! Who a finished operation is handed back to: the next `wait()`/`poll_completions()`, or
//! the `wait_for()` call that named its token.
//!
//! Every token the caller was given is "live" until it is handed back, exactly once. A
//! `wait_for(tokens)` claims its tokens first; from then on their completions are kept
//! aside (`claimed`) where neither `wait()` nor `poll_completions()` sees them, and the
//! claim is either fulfilled (all of them complete: handed back together, in the caller's
//! order) or withdrawn (timeout, signal, error: whatever completed goes back to the common
//! queue, nothing is lost).
//!
//! Tokens of the `*_nowait` submissions (an event loop's) are handed back by
//! `take_nowait` alone: a `wait()`/`poll_completions()` of another user of the instance
//! never takes them, and the loop never takes anyone else's.
//!
//! Live tokens are a bitmap over the token range rather than a hash set: tokens are handed
//! out in increasing order, so marking one live is an append and the bitmap's low end moves
//! up as the oldest ones are handed back. A hash set would cost an insert and a remove with
//! hashing on every operation of the hot path; the bitmap costs a bit flip. Its size is
//! the distance between the oldest live token and the newest, one bit each.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasherDefault;

use crate::manager::{TokenHasher, TokenMap};

/// A finished operation as the caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub token: u64,
    /// Bytes written or read, 0 for a datasync, or a negative errno.
    pub result: i64,
    /// The bytes a read returned (`result` of them); `None` for every other operation.
    pub data: Option<Vec<u8>>,
}

impl Completion {
    pub fn new(token: u64, result: i64) -> Self {
        Self {
            token,
            result,
            data: None,
        }
    }
}

/// Tokens handed out and not yet handed back.
#[derive(Default)]
pub struct TokenSet {
    /// The token of bit 0 of `words[0]`; a multiple of 64.
    base: u64,
    words: VecDeque<u64>,
    len: usize,
}

impl TokenSet {
    /// Marks `token` live. Tokens come in increasing order, so this only ever appends.
    pub fn insert(&mut self, token: u64) {
        if self.words.is_empty() {
            self.base = token & !63;
        }
        debug_assert!(token >= self.base, "tokens are issued in increasing order");
        let index = ((token - self.base) / 64) as usize;
        while self.words.len() <= index {
            self.words.push_back(0);
        }
        let bit = 1u64 << (token % 64);
        debug_assert!(self.words[index] & bit == 0, "token {token} issued twice");
        self.words[index] |= bit;
        self.len += 1;
    }

    pub fn contains(&self, token: u64) -> bool {
        if token < self.base {
            return false;
        }
        let index = ((token - self.base) / 64) as usize;
        self.words
            .get(index)
            .is_some_and(|w| w & (1u64 << (token % 64)) != 0)
    }

    /// Marks `token` handed back; says whether it was live.
    pub fn remove(&mut self, token: u64) -> bool {
        if !self.contains(token) {
            return false;
        }
        let index = ((token - self.base) / 64) as usize;
        self.words[index] &= !(1u64 << (token % 64));
        self.len -= 1;
        // Drop empty words at the low end, but keep the last one: later tokens of its range
        // may still be inserted.
        while self.words.len() > 1 && self.words[0] == 0 {
            self.words.pop_front();
            self.base += 64;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

type TokenHashSet = HashSet<u64, BuildHasherDefault<TokenHasher>>;

/// Why a `wait_for` cannot claim its tokens; the caller turns it into a ValueError.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    NotOutstanding(u64),
    Duplicate(u64),
    AlreadyClaimed(u64),
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::NotOutstanding(t) => write!(
                f,
                "token {t} is not outstanding on this instance (never returned by submit_*, or \
                 already handed back)"
            ),
            ClaimError::Duplicate(t) => write!(f, "token {t} appears more than once in tokens"),
            ClaimError::AlreadyClaimed(t) => {
                write!(
                    f,
                    "token {t} is already being waited for by another wait_for()"
                )
            }
        }
    }
}

/// Finished operations waiting to be handed back, and the claims of `wait_for` calls.
#[derive(Default)]
pub struct Handback {
    live: TokenSet,
    /// Completions nobody claimed, in completion order.
    ready: Vec<Completion>,
    claims: TokenHashSet,
    /// Completions of claimed tokens.
    claimed: TokenMap<Completion>,
    /// Tokens of `*_nowait` submissions not handed back yet, and their completions.
    nowait: TokenSet,
    nowait_ready: Vec<Completion>,
    /// A `*_nowait` completion was handed over since the last `take_nowait`.
    nowait_signal: bool,
    /// Completions handed over so far (ready or claimed), to tell whether a call made any.
    pub deliveries: u64,
}

impl Handback {
    pub fn issued(&mut self, token: u64) {
        self.live.insert(token);
    }

    /// A token issued and then not used after all (its submission failed).
    pub fn forget(&mut self, token: u64) {
        self.live.remove(token);
        self.nowait.remove(token);
    }

    /// A token of a `*_nowait` submission: handed back by `take_nowait` only.
    pub fn issued_nowait(&mut self, token: u64) {
        self.live.insert(token);
        self.nowait.insert(token);
    }

    /// A finished operation: to its claimant if a `wait_for` waits for it, else to the
    /// queue of its kind (`nowait` or the common one).
    pub fn deliver(&mut self, completion: Completion) {
        self.deliveries += 1;
        if !self.claims.is_empty() && self.claims.contains(&completion.token) {
            self.claimed.insert(completion.token, completion);
        } else if !self.nowait.is_empty() && self.nowait.contains(completion.token) {
            self.nowait_ready.push(completion);
            self.nowait_signal = true;
        } else {
            self.ready.push(completion);
        }
    }

    /// Hands back every finished `*_nowait` operation.
    pub fn take_nowait(&mut self, out: &mut Vec<Completion>) {
        for c in &self.nowait_ready {
            self.live.remove(c.token);
            self.nowait.remove(c.token);
        }
        out.append(&mut self.nowait_ready);
        self.nowait_signal = false;
    }

    /// Whether a `*_nowait` completion was handed over since the last `take_nowait` (and
    /// not signalled yet).
    pub fn take_nowait_signal(&mut self) -> bool {
        std::mem::take(&mut self.nowait_signal)
    }

    /// `*_nowait` operations not finished yet (nobody but `take_nowait` waits for them).
    pub fn nowait_unfinished(&self) -> usize {
        self.nowait.len() - self.nowait_ready.len()
    }

    /// Completions not claimed by anyone.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Completions waiting to be handed back, claimed and `nowait` ones included.
    pub fn waiting_len(&self) -> usize {
        self.ready.len() + self.claimed.len() + self.nowait_ready.len()
    }

    /// Claimed tokens whose operation has not finished yet.
    pub fn claimed_unfinished(&self) -> usize {
        self.claims.len() - self.claimed.len()
    }

    /// Hands back every unclaimed completion.
    pub fn take_ready(&mut self, out: &mut Vec<Completion>) {
        for c in &self.ready {
            self.live.remove(c.token);
        }
        out.append(&mut self.ready);
    }

    /// Claims `tokens` for one `wait_for` call, or claims nothing and says why not.
    pub fn claim(&mut self, tokens: &[u64]) -> Result<(), ClaimError> {
        let mut seen = TokenHashSet::default();
        for &t in tokens {
            if !self.live.contains(t) {
                return Err(ClaimError::NotOutstanding(t));
            }
            if !seen.insert(t) {
                return Err(ClaimError::Duplicate(t));
            }
            if self.claims.contains(&t) {
                return Err(ClaimError::AlreadyClaimed(t));
            }
        }
        self.claims.extend(seen.iter().copied());
        let claims = &self.claims;
        let claimed = &mut self.claimed;
        for queue in [&mut self.ready, &mut self.nowait_ready] {
            queue.retain_mut(|c| {
                if claims.contains(&c.token) {
                    claimed.insert(c.token, std::mem::replace(c, Completion::new(0, 0)));
                    false
                } else {
                    true
                }
            });
        }
        Ok(())
    }

    /// Whether every token of a claim has finished.
    pub fn claim_complete(&self, tokens: &[u64]) -> bool {
        tokens.iter().all(|t| self.claimed.contains_key(t))
    }

    /// How many tokens of a claim have finished.
    pub fn claim_progress(&self, tokens: &[u64]) -> usize {
        tokens
            .iter()
            .filter(|t| self.claimed.contains_key(t))
            .count()
    }

    /// Hands back a complete claim, in the order of `tokens`.
    pub fn take_claim(&mut self, tokens: &[u64]) -> Vec<Completion> {
        tokens
            .iter()
            .map(|t| {
                self.claims.remove(t);
                self.live.remove(*t);
                self.nowait.remove(*t);
                self.claimed.remove(t).expect("claim checked complete")
            })
            .collect()
    }

    /// Withdraws a claim: what finished goes back to the common queue.
    pub fn withdraw(&mut self, tokens: &[u64]) {
        for t in tokens {
            self.claims.remove(t);
            if let Some(c) = self.claimed.remove(t) {
                if self.nowait.contains(c.token) {
                    self.nowait_ready.push(c);
                } else {
                    self.ready.push(c);
                }
            }
        }
    }

    pub fn live_len(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_set_follows_issue_and_handback() {
        let mut s = TokenSet::default();
        for t in 1..=200 {
            s.insert(t);
        }
        assert!(s.contains(1) && s.contains(200) && !s.contains(201) && !s.contains(0));
        for t in 1..=150 {
            assert!(s.remove(t));
        }
        assert!(!s.remove(3), "handed back twice");
        assert_eq!(s.len(), 50);
        assert!(s.words.len() <= 2, "low words are dropped as tokens go");
        s.insert(201);
        assert!(s.contains(201) && s.contains(151));
    }

    #[test]
    fn claimed_completions_are_kept_from_the_queue_and_returned_in_order() {
        let mut h = Handback::default();
        for t in 1..=4 {
            h.issued(t);
        }
        h.deliver(Completion::new(2, 0));
        h.claim(&[3, 2]).unwrap();
        assert_eq!(h.ready_len(), 0, "2 moved to its claim");
        h.deliver(Completion::new(1, 5));
        h.deliver(Completion::new(3, 7));
        assert!(h.claim_complete(&[3, 2]));
        let got: Vec<u64> = h.take_claim(&[3, 2]).iter().map(|c| c.token).collect();
        assert_eq!(got, vec![3, 2]);
        assert_eq!(
            h.claim(&[2]),
            Err(ClaimError::NotOutstanding(2)),
            "handed back already"
        );
        assert_eq!(h.claim(&[4, 4]), Err(ClaimError::Duplicate(4)));
        h.claim(&[4]).unwrap();
        assert_eq!(h.claim(&[4]), Err(ClaimError::AlreadyClaimed(4)));
        h.deliver(Completion::new(4, 1));
        h.withdraw(&[4]);
        let mut out = Vec::new();
        h.take_ready(&mut out);
        let got: Vec<u64> = out.iter().map(|c| c.token).collect();
        assert_eq!(got, vec![1, 4]);
        assert_eq!(h.live_len(), 0);
    }
}
