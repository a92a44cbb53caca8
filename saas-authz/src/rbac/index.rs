//! The hot-path index: (tenant, user) → the member's role mask and the union of their
//! roles' first 128 permissions, in an open-addressing table of 64-byte slots. A check
//! reads one cache line (hashbrown reads a control group and a bucket, two or three),
//! which keeps the check flat as tenants and users grow.

use saas_core::{TenantId, UserId};

use super::model::{PermSet, Permission};

/// Permissions below this bit are answered from the slot alone.
pub(crate) const FAST_BITS: u16 = 128;

#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub(crate) struct Slot {
    tenant: u128,
    user: u128,
    pub(crate) mask: u64,
    /// The union of the member's roles' permissions 0..128.
    lo: [u64; 2],
}

impl Slot {
    /// Whether the member's roles include `p`; `None` when `p` is beyond the slot's
    /// bits (ask the roles).
    #[inline]
    pub(crate) fn includes(&self, p: Permission) -> Option<bool> {
        (p.0 < FAST_BITS).then(|| self.lo[usize::from(p.0 >> 6)] & (1 << (p.0 & 63)) != 0)
    }
}

/// Nil ids never occur (ours are UUIDv7), so a zero tenant marks an empty slot.
#[derive(Clone, Default)]
pub(crate) struct MemberIndex {
    slots: Box<[Slot]>,
    shift: u32,
}

#[inline]
fn hash(tenant: u128, user: u128) -> u64 {
    // The low halves carry the ids' random bits.
    ((tenant as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (user as u64)).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

impl MemberIndex {
    /// Builds the index at most half full.
    pub(crate) fn build<I>(len: usize, entries: I) -> Self
    where
        I: IntoIterator<Item = (TenantId, UserId, u64, PermSet)>,
    {
        let capacity = (len * 2).next_power_of_two().max(16);
        let shift = 64 - capacity.trailing_zeros();
        let mut slots = vec![Slot::default(); capacity].into_boxed_slice();
        let mask = capacity - 1;
        for (tenant, user, roles, perms) in entries {
            let (t, u) = (tenant.into_uuid().as_u128(), user.into_uuid().as_u128());
            let mut i = (hash(t, u) >> shift) as usize;
            while slots[i].tenant != 0 && !(slots[i].tenant == t && slots[i].user == u) {
                i = (i + 1) & mask;
            }
            slots[i] = Slot {
                tenant: t,
                user: u,
                mask: roles,
                lo: [perms.word(0), perms.word(1)],
            };
        }
        Self { slots, shift }
    }

    #[inline(always)]
    pub(crate) fn get(&self, tenant: TenantId, user: UserId) -> Option<&Slot> {
        if self.slots.is_empty() {
            return None;
        }
        let (t, u) = (tenant.into_uuid().as_u128(), user.into_uuid().as_u128());
        let mask = self.slots.len() - 1;
        let mut i = (hash(t, u) >> self.shift) as usize;
        loop {
            let slot = &self.slots[i];
            if slot.tenant == t && slot.user == u {
                return Some(slot);
            }
            if slot.tenant == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_entry_and_nothing_else() {
        let t = TenantId::new();
        let users: Vec<UserId> = (0..1000).map(|_| UserId::new()).collect();
        let index = MemberIndex::build(
            users.len(),
            users.iter().enumerate().map(|(i, u)| (t, *u, i as u64, PermSet::EMPTY)),
        );
        for (i, u) in users.iter().enumerate() {
            assert_eq!(index.get(t, *u).map(|s| s.mask), Some(i as u64));
        }
        assert!(index.get(t, UserId::new()).is_none());
        assert!(index.get(TenantId::new(), users[0]).is_none());
        assert!(MemberIndex::default().get(t, users[0]).is_none());
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }
}
