//! Invitations: single use, expiry, revocation, email match, seat limits.

use std::sync::Arc;

use saas_authz::{
    AuthSettings, FixedSeats, InvitationError, InvitationToken, Invitations, MemberError, Memberships, RecordingMailer,
};
use saas_core::Principal;
use saas_core::clock::ManualClock;
use saas_tenancy::TenantTx;

use crate::{clock, db, tenant, user};

struct Setup {
    db: saas_core::testkit::TestDb,
    acme: saas_core::TenantId,
    owner: Principal,
    memberships: Memberships,
    mailer: RecordingMailer,
    clock: ManualClock,
}

async fn setup() -> Setup {
    let db = db().await;
    let acme = tenant(&db, "acme").await;
    let owner = user(&db, "owner@acme.test", true).await;
    let memberships = Memberships::new(db.app().clone());
    let mut tx = TenantTx::begin(db.app(), acme).await.unwrap();
    memberships.bootstrap_owner(&mut tx, owner.user_id).await.unwrap();
    tx.commit().await.unwrap();
    Setup {
        db,
        acme,
        owner,
        memberships,
        mailer: RecordingMailer::new(),
        clock: clock(),
    }
}

impl Setup {
    fn invitations(&self) -> Invitations<RecordingMailer> {
        Invitations::new(self.memberships.clone(), self.mailer.clone()).with_clock(Arc::new(self.clock.clone()))
    }

    async fn invite(&self, email: &str, role: &str) -> Result<String, InvitationError> {
        let mut tx = TenantTx::begin(self.db.app(), self.acme).await.unwrap();
        self.invitations().invite(&mut tx, &self.owner, email, role).await?;
        tx.commit().await.unwrap();
        Ok(self.mailer.last_token().unwrap())
    }

    async fn accept(&self, who: &Principal, token: &str) -> Result<saas_authz::Member, InvitationError> {
        let token = InvitationToken::parse(token)?;
        let mut tx = TenantTx::begin(self.db.app(), token.tenant()).await.unwrap();
        let r = self.invitations().accept(&mut tx, who, &token).await;
        if r.is_ok() {
            tx.commit().await.unwrap();
        }
        r
    }
}

#[tokio::test]
async fn an_invitation_is_accepted_once_by_the_invited_address() {
    let s = setup().await;
    let token = s.invite("Ann@Example.com", "member").await.unwrap();
    let sent = s.mailer.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].invitation.email, "ann@example.com");
    assert_eq!(sent[0].inviter_email.as_deref(), Some("owner@acme.test"));
    assert!(token.starts_with("inv_"));
    // Stored only as a digest.
    let dump: String = sqlx::query_scalar("SELECT row_to_json(i)::text FROM saas.invitations i")
        .fetch_one(s.db.platform())
        .await
        .unwrap();
    assert!(!dump.contains(&token[4..]));

    let mut tx = TenantTx::begin(s.db.app(), s.acme).await.unwrap();
    assert_eq!(s.invitations().pending(&mut tx).await.unwrap().len(), 1);
    drop(tx);

    let bob = user(&s.db, "bob@example.com", false).await;
    assert!(matches!(s.accept(&bob, &token).await, Err(InvitationError::WrongEmail)));
    let ann = user(&s.db, "ann@example.com", false).await;
    let member = s.accept(&ann, &token).await.unwrap();
    assert_eq!(member.roles, ["member"]);
    assert_eq!(member.invited_by, Some(s.owner.user_id));
    assert!(matches!(
        s.accept(&ann, &token).await,
        Err(InvitationError::AlreadyAccepted)
    ));

    // A forged secret for the same invitation is "not found", not "wrong secret".
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 3.., "AAA");
    assert!(matches!(
        s.accept(&ann, &forged).await,
        Err(InvitationError::NotFound | InvitationError::MalformedToken)
    ));
    assert!(matches!(
        s.accept(&ann, "inv_garbage").await,
        Err(InvitationError::MalformedToken)
    ));

    let mut tx = TenantTx::begin(s.db.app(), s.acme).await.unwrap();
    assert!(s.invitations().pending(&mut tx).await.unwrap().is_empty());
    let actions: Vec<String> = sqlx::query_scalar("SELECT action FROM saas.audit_log ORDER BY seq")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert!(
        actions.ends_with(&[
            "invitation.created".into(),
            "member.added".into(),
            "invitation.accepted".into()
        ]),
        "{actions:?}"
    );
}

#[tokio::test]
async fn expired_revoked_and_resent_links_stop_working() {
    let s = setup().await;
    let carol = user(&s.db, "carol@example.com", false).await;

    let token = s.invite("carol@example.com", "viewer").await.unwrap();
    s.clock.advance(chrono::Duration::days(8));
    assert!(matches!(s.accept(&carol, &token).await, Err(InvitationError::Expired)));

    // An expired invitation gives way to a new one; resend replaces the link.
    let first = s.invite("carol@example.com", "viewer").await.unwrap();
    let id = s.mailer.sent().last().unwrap().invitation.id;
    let mut tx = TenantTx::begin(s.db.app(), s.acme).await.unwrap();
    let resent = s.invitations().resend(&mut tx, &s.owner, id).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(resent.sent_count, 2);
    let second = s.mailer.last_token().unwrap();
    assert_ne!(first, second);
    assert!(matches!(s.accept(&carol, &first).await, Err(InvitationError::NotFound)));

    let mut tx = TenantTx::begin(s.db.app(), s.acme).await.unwrap();
    s.invitations().revoke(&mut tx, &s.owner, id).await.unwrap();
    tx.commit().await.unwrap();
    assert!(matches!(s.accept(&carol, &second).await, Err(InvitationError::Revoked)));

    // A pending invitation blocks a duplicate.
    s.invite("dave@example.com", "viewer").await.unwrap();
    assert!(matches!(
        s.invite("DAVE@example.com", "viewer").await,
        Err(InvitationError::AlreadyInvited(_))
    ));
}

#[tokio::test]
async fn rules_emails_and_seats() {
    let s = setup().await;
    assert!(matches!(
        s.invite("not-an-email", "member").await,
        Err(InvitationError::InvalidEmail(_))
    ));
    assert!(matches!(
        s.invite("x@example.com", "root").await,
        Err(InvitationError::Member(MemberError::UnknownRole(_)))
    ));
    assert!(matches!(
        s.invite("owner@acme.test", "member").await,
        Err(InvitationError::Member(MemberError::AlreadyMember))
    ));

    // An admin cannot invite an owner; a viewer cannot invite at all.
    let admin = user(&s.db, "admin@acme.test", true).await;
    let viewer = user(&s.db, "viewer@acme.test", true).await;
    let mut tx = TenantTx::begin(s.db.app(), s.acme).await.unwrap();
    s.memberships
        .add(&mut tx, &s.owner, admin.user_id, &["admin"])
        .await
        .unwrap();
    s.memberships
        .add(&mut tx, &s.owner, viewer.user_id, &["viewer"])
        .await
        .unwrap();
    let inv = s.invitations();
    assert!(matches!(
        inv.invite(&mut tx, &admin, "boss@example.com", "owner").await,
        Err(InvitationError::Member(MemberError::AboveOwnRole(_)))
    ));
    assert!(matches!(
        inv.invite(&mut tx, &viewer, "friend@example.com", "viewer").await,
        Err(InvitationError::Member(MemberError::Forbidden))
    ));
    tx.commit().await.unwrap();

    // Three members; four seats: one invitation fits, the next does not.
    let limited = s.invitations().seat_limit(FixedSeats(4));
    let mut tx = TenantTx::begin(s.db.app(), s.acme).await.unwrap();
    limited
        .invite(&mut tx, &s.owner, "e@example.com", "member")
        .await
        .unwrap();
    let r = limited.invite(&mut tx, &s.owner, "f@example.com", "member").await;
    assert!(matches!(r, Err(InvitationError::SeatLimit { limit: 4 })), "{r:?}");
    tx.commit().await.unwrap();

    // A tenant may let any address accept.
    let token = s.invite("typo@example.com", "member").await.unwrap();
    let real = user(&s.db, "real@example.com", false).await;
    assert!(matches!(
        s.accept(&real, &token).await,
        Err(InvitationError::WrongEmail)
    ));
    let mut tx = TenantTx::begin(s.db.app(), s.acme).await.unwrap();
    s.memberships
        .update_settings(
            &mut tx,
            &s.owner,
            AuthSettings::default().with_invitations_any_email(true),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    s.accept(&real, &token).await.unwrap();
}

#[tokio::test]
async fn a_token_only_opens_its_own_tenant() {
    let s = setup().await;
    let globex = tenant(&s.db, "globex").await;
    let token = s.invite("ann@example.com", "member").await.unwrap();
    let ann = user(&s.db, "ann@example.com", false).await;
    let parsed = InvitationToken::parse(&token).unwrap();
    // Accepting inside another tenant's transaction finds nothing.
    let mut tx = TenantTx::begin(s.db.app(), globex).await.unwrap();
    assert!(matches!(
        s.invitations().accept(&mut tx, &ann, &parsed).await,
        Err(InvitationError::NotFound)
    ));
}
