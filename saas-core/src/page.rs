//! Cursor pagination: opaque, tamper-evident cursors, page size caps, a typed page.
//!
//! A cursor names the last row of a page by its UUIDv7 id, or by `(created_at, id)`,
//! and is bound to a scope (a tenant and a listing) with an HMAC, so that a client can
//! neither forge a position nor replay a cursor of another tenant or another list.
//!
//! ```
//! use saas_core::page::{CursorCodec, PageRequest, Position};
//!
//! let codec = CursorCodec::new([7u8; 32]);
//! let id = uuid::Uuid::now_v7();
//! let cursor = codec.encode(&Position::Id(id), "tenant-1/projects");
//! assert_eq!(codec.decode(&cursor, "tenant-1/projects").unwrap(), Position::Id(id));
//! assert!(codec.decode(&cursor, "tenant-2/projects").is_err());
//!
//! let req = PageRequest::new(Some(10_000), None);
//! assert_eq!(req.limit(), saas_core::page::MAX_LIMIT);
//! ```

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::problem::{IntoProblem, Problem};
use crate::telemetry::Redacted;

/// The page size when the client asks for none.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest page size served; larger requests are capped to it.
pub const MAX_LIMIT: u32 = 200;
const MAC_LEN: usize = 16;

/// Where a page ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Position {
    /// After this UUIDv7 id (ids sort by creation).
    Id(uuid::Uuid),
    /// After this creation time, then id (for rows whose ids are not time-ordered).
    CreatedAt(DateTime<Utc>, uuid::Uuid),
}

/// A cursor cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CursorError {
    /// Not a cursor produced here, altered, or issued for another list or tenant.
    #[error("the cursor is invalid; pass back the `next` value of the previous page unchanged")]
    Invalid,
}

impl IntoProblem for CursorError {
    fn to_problem(&self) -> Problem {
        Problem::bad_request(self.to_string()).with_type("invalid-cursor")
    }
}

/// Encodes and checks cursors with a secret key.
#[derive(Clone)]
pub struct CursorCodec {
    key: Redacted<[u8; 32]>,
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCodec([redacted])")
    }
}

impl CursorCodec {
    /// A codec with a 32-byte secret (the same on every instance that serves a list).
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key: Redacted::new(key),
        }
    }

    /// A codec with a random key: cursors work within this process only.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            // Two UUIDv7s still carry 148 random bits.
            key[..16].copy_from_slice(crate::id::new_v7().as_bytes());
            key[16..].copy_from_slice(crate::id::new_v7().as_bytes());
        }
        Self::new(key)
    }

    fn mac(&self, scope: &str, payload: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.expose()).unwrap_or_else(|_| unreachable!());
        mac.update(&(scope.len() as u64).to_be_bytes());
        mac.update(scope.as_bytes());
        mac.update(payload);
        let out = mac.finalize().into_bytes();
        let mut tag = [0u8; MAC_LEN];
        tag.copy_from_slice(&out[..MAC_LEN]);
        tag
    }

    /// The cursor for `position` within `scope` (for example `"{tenant}/projects"`).
    pub fn encode(&self, position: &Position, scope: &str) -> String {
        let mut payload = Vec::with_capacity(1 + 8 + 16 + MAC_LEN);
        match position {
            Position::Id(id) => {
                payload.push(1);
                payload.extend_from_slice(id.as_bytes());
            }
            Position::CreatedAt(at, id) => {
                payload.push(2);
                payload.extend_from_slice(&at.timestamp_micros().to_be_bytes());
                payload.extend_from_slice(id.as_bytes());
            }
        }
        let tag = self.mac(scope, &payload);
        payload.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// The position a cursor names, if it was issued here for `scope` and not altered.
    pub fn decode(&self, cursor: &str, scope: &str) -> Result<Position, CursorError> {
        if cursor.len() > 64 {
            return Err(CursorError::Invalid);
        }
        let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| CursorError::Invalid)?;
        if raw.len() < 1 + MAC_LEN {
            return Err(CursorError::Invalid);
        }
        let (payload, tag) = raw.split_at(raw.len() - MAC_LEN);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.expose()).map_err(|_| CursorError::Invalid)?;
        mac.update(&(scope.len() as u64).to_be_bytes());
        mac.update(scope.as_bytes());
        mac.update(payload);
        mac.verify_truncated_left(tag).map_err(|_| CursorError::Invalid)?;
        let uuid = |b: &[u8]| uuid::Uuid::from_slice(b).map_err(|_| CursorError::Invalid);
        match (payload[0], payload.len()) {
            (1, 17) => Ok(Position::Id(uuid(&payload[1..])?)),
            (2, 25) => {
                let micros = i64::from_be_bytes(payload[1..9].try_into().map_err(|_| CursorError::Invalid)?);
                let at = DateTime::from_timestamp_micros(micros).ok_or(CursorError::Invalid)?;
                Ok(Position::CreatedAt(at, uuid(&payload[9..])?))
            }
            _ => Err(CursorError::Invalid),
        }
    }
}

/// The query parameters of a list request (`?limit=50&after=…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct PageRequest {
    /// Requested page size (capped to [`MAX_LIMIT`]; default [`DEFAULT_LIMIT`]).
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

impl PageRequest {
    /// A request for `limit` items after the `after` cursor.
    pub fn new(limit: Option<u32>, after: Option<String>) -> Self {
        Self { limit, after }
    }

    /// The page size to serve: the request's, within 1 and [`MAX_LIMIT`].
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }

    /// The position to continue after, checked with `codec` for `scope`.
    pub fn position(&self, codec: &CursorCodec, scope: &str) -> Result<Option<Position>, CursorError> {
        self.after.as_deref().map(|c| codec.decode(c, scope)).transpose()
    }
}

/// One page of a list, as sent to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The cursor for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// A page from `rows` fetched with `LIMIT limit + 1`: the extra row, if present, only
    /// says that there is a next page, whose cursor points after the last item kept.
    pub fn from_rows(
        mut rows: Vec<T>,
        limit: u32,
        codec: &CursorCodec,
        scope: &str,
        position_of: impl Fn(&T) -> Position,
    ) -> Self {
        let limit = limit as usize;
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| codec.encode(&position_of(last), scope))
        } else {
            None
        };
        Self { items: rows, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_resist_tampering() {
        let codec = CursorCodec::new([1u8; 32]);
        let id = uuid::Uuid::now_v7();
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        for pos in [Position::Id(id), Position::CreatedAt(at, id)] {
            let c = codec.encode(&pos, "s");
            assert_eq!(codec.decode(&c, "s"), Ok(pos));
            assert_eq!(codec.decode(&c, "other"), Err(CursorError::Invalid));
            assert_eq!(CursorCodec::new([2u8; 32]).decode(&c, "s"), Err(CursorError::Invalid));
            // Flip each character: never accepted.
            for i in 0..c.len() {
                let mut b = c.clone().into_bytes();
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                let t = String::from_utf8(b).unwrap();
                if t != c {
                    assert!(codec.decode(&t, "s").is_err(), "{t}");
                }
            }
        }
        for bad in ["", "!!", "AAAA", &"A".repeat(100)] {
            assert_eq!(codec.decode(bad, "s"), Err(CursorError::Invalid));
        }
    }

    #[test]
    fn pages_cap_and_link() {
        assert_eq!(PageRequest::default().limit(), DEFAULT_LIMIT);
        assert_eq!(
            PageRequest {
                limit: Some(0),
                after: None
            }
            .limit(),
            1
        );
        assert_eq!(
            PageRequest {
                limit: Some(999),
                after: None
            }
            .limit(),
            MAX_LIMIT
        );
        let codec = CursorCodec::random();
        let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::now_v7()).collect();
        let page = Page::from_rows(ids.clone(), 3, &codec, "s", |id| Position::Id(*id));
        assert_eq!(page.items.len(), 3);
        let next = page.next.unwrap();
        assert_eq!(codec.decode(&next, "s").unwrap(), Position::Id(ids[2]));
        let last = Page::from_rows(ids[..2].to_vec(), 3, &codec, "s", |id| Position::Id(*id));
        assert_eq!(last.next, None);
        let req = PageRequest {
            limit: None,
            after: Some("tampered".into()),
        };
        assert!(req.position(&codec, "s").is_err());
    }
}
