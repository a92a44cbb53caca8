//! MurmurHash3 (x86, 32-bit) of `"{group}:{value}"` without building the string.
//!
//! Unleash buckets a user with `murmur3_32("{groupId}:{stickiness value}", seed)`. The
//! group part is fixed per strategy, so [`Prefix`] hashes its whole 4-byte blocks once
//! when a flag is compiled and keeps the 0–3 byte remainder; an evaluation then hashes
//! only the value's bytes. Checked against the `murmur3` crate in the tests.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// The variant seed Unleash uses (`86028157`); rollouts use seed 0.
pub const VARIANT_SEED: u32 = 86_028_157;

#[inline(always)]
fn mix_k(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

#[inline(always)]
fn mix_h(h: u32, k: u32) -> u32 {
    (h ^ mix_k(k)).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: usize) -> u32 {
    h ^= len as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The hash state after `"{group}:"`, ready to take a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    h: u32,
    /// Bytes of the prefix not yet in a whole block (little-endian, low bytes first).
    tail: u32,
    tail_len: u8,
    len: usize,
}

impl Prefix {
    /// The state after hashing `"{group}:"` with `seed`.
    pub fn new(group: &str, seed: u32) -> Self {
        let mut p = Prefix {
            h: seed,
            tail: 0,
            tail_len: 0,
            len: 0,
        };
        p.push(group.as_bytes());
        p.push(b":");
        p
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.tail |= u32::from(b) << (8 * u32::from(self.tail_len));
            self.tail_len += 1;
            self.len += 1;
            if self.tail_len == 4 {
                self.h = mix_h(self.h, self.tail);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
    }

    /// `murmur3_32("{group}:{value}", seed)`.
    #[inline]
    pub fn hash(&self, value: &[u8]) -> u32 {
        let mut h = self.h;
        let mut rest = value;
        let mut k = self.tail;
        let mut k_len = u32::from(self.tail_len);
        if k_len > 0 {
            // Fill the pending block from the value's first bytes.
            let need = (4 - k_len) as usize;
            if rest.len() < need {
                for (i, &b) in rest.iter().enumerate() {
                    k |= u32::from(b) << (8 * (k_len + i as u32));
                }
                k_len += rest.len() as u32;
                rest = &[];
            } else {
                for (i, &b) in rest[..need].iter().enumerate() {
                    k |= u32::from(b) << (8 * (k_len + i as u32));
                }
                h = mix_h(h, k);
                rest = &rest[need..];
                k = 0;
                k_len = 0;
            }
        }
        if k_len == 0 {
            let mut blocks = rest.chunks_exact(4);
            for block in &mut blocks {
                h = mix_h(h, u32::from_le_bytes([block[0], block[1], block[2], block[3]]));
            }
            for (i, &b) in blocks.remainder().iter().enumerate() {
                k |= u32::from(b) << (8 * i as u32);
                k_len += 1;
            }
        }
        if k_len > 0 {
            h ^= mix_k(k);
        }
        finish(h, self.len + value.len())
    }

    /// Unleash's normalised bucket: `hash % modulus + 1`, in `1..=modulus`.
    #[inline]
    pub fn bucket(&self, value: &str, modulus: u32) -> u32 {
        self.hash(value.as_bytes()) % modulus + 1
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn reference(s: &str, seed: u32) -> u32 {
        murmur3::murmur3_32(&mut std::io::Cursor::new(s.as_bytes()), seed).unwrap()
    }

    #[test]
    fn matches_the_murmur3_crate_for_every_split() {
        let groups = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "Feature.A",
            "gradual-rollout-group",
            "ünïcode",
        ];
        let values = [
            "",
            "1",
            "12",
            "123",
            "1234",
            "12345",
            "user-123456789",
            "0190f3a4-7c2e-7d41-9b1a-3c5d6e7f8091",
        ];
        for g in groups {
            for v in values {
                for seed in [0, VARIANT_SEED] {
                    let p = Prefix::new(g, seed);
                    assert_eq!(
                        p.hash(v.as_bytes()),
                        reference(&format!("{g}:{v}"), seed),
                        "{g}:{v} seed {seed}"
                    );
                }
            }
        }
    }

    #[test]
    fn known_unleash_buckets() {
        // From Unleash's client specification (gradual rollout by user id, group "Feature.Rollout.UserId").
        assert_eq!(
            Prefix::new("gr1", 0).bucket("123", 100),
            reference("gr1:123", 0) % 100 + 1
        );
        // normalizedValue("123", "gr1") == 73 in unleash-client-node's tests.
        assert_eq!(Prefix::new("gr1", 0).bucket("123", 100), 73);
        assert_eq!(Prefix::new("groupX", 0).bucket("999", 100), 25);
    }
}
