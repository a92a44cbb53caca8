//! The access policy: what a tenant may use, from its subscription's status, how long
//! that status has held, and its plan. Pure: the same inputs give the same answer, and
//! the time comes from the caller (a [`Clock`](saas_core::clock::Clock)).
//!
//! | status | the tenant gets | payment problem |
//! |---|---|---|
//! | `trialing`, `active` | its plan | no |
//! | `past_due`, for less than the grace period | its plan | yes |
//! | `past_due`, after the grace period | the lapsed fallback | yes |
//! | `incomplete` (first payment pending) | the free plan | yes |
//! | `unpaid`, `canceled`, `incomplete_expired` | the lapsed fallback | `unpaid` only |
//! | `paused` (trial ended without a payment method) | the free plan, restricted | yes |
//! | no subscription | the free plan | no |
//!
//! The lapsed fallback is the free plan (the default) or, with [`Lapsed::ReadOnly`], the
//! plan the tenant had, read-only: data stays visible, nothing new is created.

use chrono::{DateTime, Duration, Utc};

use crate::status::SubscriptionStatus;

/// What happens when a subscription lapses (unpaid, canceled, expired, or past due
/// beyond the grace period).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lapsed {
    /// The tenant falls back to the free plan.
    FreePlan,
    /// The tenant keeps its plan's features, read-only.
    ReadOnly,
}

/// How far the tenant may use what its plan grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything the plan grants.
    Full,
    /// Read what exists; create and change nothing.
    ReadOnly,
    /// The plan's features are withheld until the subscription resumes.
    Restricted,
}

/// Why the tenant has the access it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessReason {
    /// No subscription: the free plan.
    NoSubscription,
    /// In a trial.
    Trial,
    /// Paid and current.
    Subscribed,
    /// A payment failed; the plan holds until `until`.
    Grace {
        /// When the grace period ends.
        until: DateTime<Utc>,
    },
    /// The first payment has not gone through.
    Incomplete,
    /// The subscription lapsed (the status says how).
    Lapsed(SubscriptionStatus),
    /// Paused after a trial without a payment method.
    Paused,
}

/// The answer of the [`AccessPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The plan whose features apply.
    pub plan: String,
    /// How far they apply.
    pub mode: Mode,
    /// Why.
    pub reason: AccessReason,
    /// Whether the tenant should be told to fix its payment (a banner, an email).
    pub payment_problem: bool,
}

/// Maps (status, time in status, plan) to [`Access`]; see the module documentation for
/// the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    free_plan: String,
    grace: Duration,
    lapsed: Lapsed,
}

impl AccessPolicy {
    /// The policy with `free_plan` as the fallback plan, a 7-day grace period for failed
    /// payments and lapsed subscriptions falling back to the free plan.
    pub fn new(free_plan: impl Into<String>) -> Self {
        Self {
            free_plan: free_plan.into(),
            grace: Duration::days(7),
            lapsed: Lapsed::FreePlan,
        }
    }

    /// How long a past-due subscription keeps its plan.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// What a lapsed subscription falls back to.
    pub fn lapsed(mut self, lapsed: Lapsed) -> Self {
        self.lapsed = lapsed;
        self
    }

    /// The fallback plan's key.
    pub fn free_plan(&self) -> &str {
        &self.free_plan
    }

    /// The access of a tenant whose subscription to `plan` has had `status` since
    /// `since`, at `now`; `None` for a tenant without a subscription.
    pub fn decide(
        &self,
        subscription: Option<(SubscriptionStatus, DateTime<Utc>, &str)>,
        now: DateTime<Utc>,
    ) -> Access {
        use SubscriptionStatus::{Active, Canceled, Incomplete, IncompleteExpired, PastDue, Paused, Trialing, Unpaid};
        let free = |mode, reason, payment_problem| Access {
            plan: self.free_plan.clone(),
            mode,
            reason,
            payment_problem,
        };
        let Some((status, since, plan)) = subscription else {
            return free(Mode::Full, AccessReason::NoSubscription, false);
        };
        let own = |mode, reason, payment_problem| Access {
            plan: plan.to_owned(),
            mode,
            reason,
            payment_problem,
        };
        let lapsed = |reason, payment_problem| match self.lapsed {
            Lapsed::FreePlan => free(Mode::Full, reason, payment_problem),
            Lapsed::ReadOnly => own(Mode::ReadOnly, reason, payment_problem),
        };
        match status {
            Trialing => own(Mode::Full, AccessReason::Trial, false),
            Active => own(Mode::Full, AccessReason::Subscribed, false),
            PastDue => {
                let until = since + self.grace;
                if now < until {
                    own(Mode::Full, AccessReason::Grace { until }, true)
                } else {
                    lapsed(AccessReason::Lapsed(PastDue), true)
                }
            }
            Incomplete => free(Mode::Full, AccessReason::Incomplete, true),
            Unpaid => lapsed(AccessReason::Lapsed(Unpaid), true),
            Canceled | IncompleteExpired => lapsed(AccessReason::Lapsed(status), false),
            Paused => free(Mode::Restricted, AccessReason::Paused, true),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::TimeZone;
    use saas_core::clock::{Clock, ManualClock};

    use super::*;
    use SubscriptionStatus::*;

    fn clock() -> ManualClock {
        ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap())
    }

    #[test]
    fn every_status_maps_as_the_table_says() {
        let clock = clock();
        let since = clock.now();
        let policy = AccessPolicy::new("free");
        let expect = |status, plan: &str, mode, problem| {
            let a = policy.decide(Some((status, since, "pro")), clock.now());
            assert_eq!(
                (a.plan.as_str(), a.mode, a.payment_problem),
                (plan, mode, problem),
                "{status}"
            );
        };
        expect(Trialing, "pro", Mode::Full, false);
        expect(Active, "pro", Mode::Full, false);
        expect(PastDue, "pro", Mode::Full, true);
        expect(Incomplete, "free", Mode::Full, true);
        expect(Unpaid, "free", Mode::Full, true);
        expect(Canceled, "free", Mode::Full, false);
        expect(IncompleteExpired, "free", Mode::Full, false);
        expect(Paused, "free", Mode::Restricted, true);
        let none = policy.decide(None, clock.now());
        assert_eq!(
            (none.plan.as_str(), none.reason),
            ("free", AccessReason::NoSubscription)
        );
    }

    #[test]
    fn past_due_keeps_the_plan_for_exactly_the_grace_period() {
        let clock = clock();
        let since = clock.now();
        let policy = AccessPolicy::new("free").grace_period(Duration::days(3));
        let at = |c: &ManualClock| policy.decide(Some((PastDue, since, "pro")), c.now());
        assert_eq!(
            at(&clock).reason,
            AccessReason::Grace {
                until: since + Duration::days(3)
            }
        );
        clock.advance(Duration::days(3) - Duration::seconds(1));
        assert_eq!(at(&clock).plan, "pro");
        clock.advance(Duration::seconds(1));
        let lapsed = at(&clock);
        assert_eq!(
            (lapsed.plan.as_str(), lapsed.reason),
            ("free", AccessReason::Lapsed(PastDue))
        );
        assert!(lapsed.payment_problem);
    }

    #[test]
    fn read_only_fallback_keeps_the_plan_without_writes() {
        let clock = clock();
        let policy = AccessPolicy::new("free").lapsed(Lapsed::ReadOnly);
        for status in [Unpaid, Canceled, IncompleteExpired] {
            let a = policy.decide(Some((status, clock.now(), "pro")), clock.now());
            assert_eq!((a.plan.as_str(), a.mode), ("pro", Mode::ReadOnly), "{status}");
        }
        // Paused and incomplete are not lapses: they never were (or are not yet) paid.
        assert_eq!(
            policy.decide(Some((Paused, clock.now(), "pro")), clock.now()).mode,
            Mode::Restricted
        );
        assert_eq!(
            policy.decide(Some((Incomplete, clock.now(), "pro")), clock.now()).plan,
            "free"
        );
    }

    #[test]
    fn the_answer_depends_only_on_its_inputs() {
        // Exhaustive over statuses × (inside, at, after the grace period) × both fallbacks:
        // the plan is the tenant's exactly when the status grants it.
        let clock = clock();
        let since = clock.now();
        for lapsed in [Lapsed::FreePlan, Lapsed::ReadOnly] {
            let policy = AccessPolicy::new("free").lapsed(lapsed.clone());
            for offset in [Duration::zero(), Duration::days(7), Duration::days(30)] {
                for status in SubscriptionStatus::ALL {
                    let now = since + offset;
                    let a = policy.decide(Some((status, since, "pro")), now);
                    assert_eq!(a, policy.decide(Some((status, since, "pro")), now));
                    let full_plan =
                        matches!(status, Trialing | Active) || (status == PastDue && offset < Duration::days(7));
                    assert_eq!(a.plan == "pro" && a.mode == Mode::Full, full_plan, "{status} +{offset}");
                }
            }
        }
    }
}
