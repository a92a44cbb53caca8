//! The subscription state machine: Stripe's statuses and the moves between them.
//!
//! The mirror follows the provider; it never invents a status. What this module adds is
//! a check that a move the provider reports is one Stripe can make, so that a stale or
//! misrouted update is noticed (logged, counted, and answered by refetching the object)
//! instead of silently regressing a subscription — and terminal states stay terminal.
//!
//! | from \ to            | incomplete | incomplete_expired | trialing | active | past_due | unpaid | paused | canceled |
//! |----------------------|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---:|
//! | `incomplete`         | = | ✓ | ✓ | ✓ | ✓ |   |   | ✓ |
//! | `incomplete_expired` |   | = |   |   |   |   |   |   |
//! | `trialing`           |   |   | = | ✓ | ✓ | ✓ | ✓ | ✓ |
//! | `active`             |   |   | ✓ | = | ✓ | ✓ | ✓ | ✓ |
//! | `past_due`           |   |   | ✓ | ✓ | = | ✓ | ✓ | ✓ |
//! | `unpaid`             |   |   | ✓ | ✓ | ✓ | = | ✓ | ✓ |
//! | `paused`             | ✓ |   | ✓ | ✓ | ✓ | ✓ | = | ✓ |
//! | `canceled`           |   |   |   |   |   |   |   | = |
//!
//! `=` is an update that keeps the status (a renewal, a quantity change). Why each ✓:
//! an incomplete subscription becomes active (or trialing, or past_due under
//! `allow_incomplete`) when its first invoice is paid and expires after 23 hours; a trial
//! ends active, past_due (payment failed), unpaid, or paused (no payment method); adding
//! a `trial_end` puts any live subscription back in trial; failed renewals go past_due,
//! and after Stripe's retries unpaid or canceled (per the account's settings); paying the
//! open invoice brings past_due and unpaid back to active; a paused subscription resumes
//! into active, trialing, past_due or incomplete (`payment_behavior` of the resume);
//! every live status can be canceled. `incomplete_expired` and `canceled` are terminal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A subscription's status, exactly Stripe's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Created; the first payment has not succeeded yet (23 hours to pay).
    Incomplete,
    /// The first payment never succeeded in time. Terminal.
    IncompleteExpired,
    /// In a trial period.
    Trialing,
    /// Paid and current.
    Active,
    /// The latest invoice's payment failed or needs action; Stripe is retrying.
    PastDue,
    /// Retries ran out and the account keeps such subscriptions as unpaid.
    Unpaid,
    /// A trial ended without a payment method; no invoices until resumed.
    Paused,
    /// Ended. Terminal.
    Canceled,
}

impl SubscriptionStatus {
    /// Every status, in the table's order.
    pub const ALL: [SubscriptionStatus; 8] = [
        SubscriptionStatus::Incomplete,
        SubscriptionStatus::IncompleteExpired,
        SubscriptionStatus::Trialing,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Unpaid,
        SubscriptionStatus::Paused,
        SubscriptionStatus::Canceled,
    ];

    /// Stripe's name for the status.
    pub const fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::IncompleteExpired => "incomplete_expired",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Paused => "paused",
            SubscriptionStatus::Canceled => "canceled",
        }
    }

    /// Whether no move leaves this status.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            SubscriptionStatus::IncompleteExpired | SubscriptionStatus::Canceled
        )
    }

    /// Whether Stripe can move a subscription from `self` to `to` (the table in the
    /// module documentation; staying put is always legal).
    pub const fn can_become(self, to: SubscriptionStatus) -> bool {
        use SubscriptionStatus::{Active, Canceled, Incomplete, IncompleteExpired, PastDue, Paused, Trialing, Unpaid};
        if self as u8 == to as u8 {
            return true;
        }
        match self {
            Incomplete => matches!(to, IncompleteExpired | Trialing | Active | PastDue | Canceled),
            IncompleteExpired | Canceled => false,
            Trialing | Active | PastDue | Unpaid => {
                matches!(to, Trialing | Active | PastDue | Unpaid | Paused | Canceled)
            }
            Paused => matches!(to, Incomplete | Trialing | Active | PastDue | Unpaid | Canceled),
        }
    }

    /// The move from `self` to `to`, or why it cannot happen.
    pub fn transition(self, to: SubscriptionStatus) -> Result<SubscriptionStatus, TransitionError> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SubscriptionStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubscriptionStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A status string that is not one of Stripe's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown subscription status {0:?} (Stripe's are incomplete, incomplete_expired, trialing, active, past_due, unpaid, paused, canceled)"
)]
pub struct UnknownStatus(pub String);

/// A move Stripe cannot make: the mirror is stale or the update is misrouted. It is
/// logged and counted, and the subscription is refetched from the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a subscription cannot move from {from} to {to}")]
pub struct TransitionError {
    /// The status the mirror holds.
    pub from: SubscriptionStatus,
    /// The status reported.
    pub to: SubscriptionStatus,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use SubscriptionStatus::*;

    /// The table of the module documentation, row by row (✓ and = as true).
    const TABLE: [[bool; 8]; 8] = [
        //  inc    inc_x  trial  active past   unpaid paused cancel
        [true, true, true, true, true, false, false, true], // incomplete
        [false, true, false, false, false, false, false, false], // incomplete_expired
        [false, false, true, true, true, true, true, true], // trialing
        [false, false, true, true, true, true, true, true], // active
        [false, false, true, true, true, true, true, true], // past_due
        [false, false, true, true, true, true, true, true], // unpaid
        [true, false, true, true, true, true, true, true],  // paused
        [false, false, false, false, false, false, false, true], // canceled
    ];

    #[test]
    fn every_pair_follows_the_documented_table() {
        for (i, from) in SubscriptionStatus::ALL.into_iter().enumerate() {
            for (j, to) in SubscriptionStatus::ALL.into_iter().enumerate() {
                assert_eq!(from.can_become(to), TABLE[i][j], "{from} → {to}");
                assert_eq!(from.transition(to).is_ok(), TABLE[i][j]);
            }
        }
    }

    #[test]
    fn terminal_states_stay_terminal() {
        for from in [IncompleteExpired, Canceled] {
            assert!(from.is_terminal());
            for to in SubscriptionStatus::ALL {
                assert_eq!(from.can_become(to), to == from);
            }
        }
        assert_eq!(
            Canceled.transition(Active),
            Err(TransitionError {
                from: Canceled,
                to: Active
            })
        );
    }

    #[test]
    fn names_round_trip_like_stripe_spells_them() {
        for s in SubscriptionStatus::ALL {
            assert_eq!(s.as_str().parse::<SubscriptionStatus>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
        assert!("cancelled".parse::<SubscriptionStatus>().is_err());
    }
}
