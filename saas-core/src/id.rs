//! UUIDv7 newtype ids.
//!
//! Every entity gets its own id type so that a `UserId` can never be passed where a
//! `TenantId` is expected. Ids are UUIDv7: they sort by creation time (within one
//! process they are strictly increasing), reveal no counts, and index well.
//!
//! Applications define their own ids with [`define_id!`](crate::define_id):
//!
//! ```
//! saas_core::define_id!(
//!     /// A project owned by a tenant.
//!     pub struct ProjectId("project");
//! );
//!
//! let id = ProjectId::new();
//! let parsed: ProjectId = id.to_string().parse().unwrap();
//! assert_eq!(id, parsed);
//! assert!(ProjectId::new() > id);
//! assert!("not-a-uuid".parse::<ProjectId>().is_err());
//! ```

use std::fmt;

/// The error returned when a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdParseError {
    /// The input was empty.
    #[error("{kind} id is empty; expected a UUID such as 0190f3b2-7c4e-7d2a-9b1e-3f5a6c7d8e9f")]
    Empty {
        /// What the id names (`tenant`, `user`, …).
        kind: &'static str,
    },
    /// The input is not a UUID.
    #[error("{kind} id {input:?} is not a UUID; expected a form such as 0190f3b2-7c4e-7d2a-9b1e-3f5a6c7d8e9f")]
    Malformed {
        /// What the id names.
        kind: &'static str,
        /// The start of the rejected input (at most 64 characters).
        input: String,
    },
}

impl IdParseError {
    #[doc(hidden)]
    pub fn malformed(kind: &'static str, input: &str) -> Self {
        if input.is_empty() {
            return Self::Empty { kind };
        }
        let input: String = input.chars().take(64).collect();
        Self::Malformed { kind, input }
    }
}

impl crate::problem::IntoProblem for IdParseError {
    fn to_problem(&self) -> crate::problem::Problem {
        crate::problem::Problem::new(http::StatusCode::BAD_REQUEST)
            .with_type("invalid-id")
            .with_title("Invalid identifier")
            .with_detail(self.to_string())
    }
}

/// Mints a new UUIDv7. Within one process consecutive values are strictly increasing.
pub fn new_v7() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// Parses a UUID for an id of the given kind, with a clear error on bad input.
#[doc(hidden)]
pub fn parse_uuid(kind: &'static str, s: &str) -> Result<uuid::Uuid, IdParseError> {
    // Bound the work on hostile input before handing it to the parser.
    if s.is_empty() || s.len() > 45 {
        return Err(IdParseError::malformed(kind, s));
    }
    uuid::Uuid::try_parse(s).map_err(|_| IdParseError::malformed(kind, s))
}

/// Writes a UUID in its hyphenated lower-case form.
#[doc(hidden)]
pub fn fmt_uuid(u: &uuid::Uuid, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    fmt::Display::fmt(&u.hyphenated(), f)
}

/// Defines a UUIDv7 newtype id with serde, sqlx, `Display`, `FromStr` and ordering.
///
/// ```
/// saas_core::define_id!(
///     /// An invoice.
///     pub struct InvoiceId("invoice");
/// );
/// let id = InvoiceId::new();
/// assert_eq!(InvoiceId::KIND, "invoice");
/// assert_eq!(InvoiceId::from_uuid(id.into_uuid()), id);
/// ```
#[macro_export]
macro_rules! define_id {
    ($(#[$meta:meta])* $vis:vis struct $name:ident($kind:literal);) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive($crate::__private::serde::Serialize, $crate::__private::serde::Deserialize)]
        #[serde(transparent, crate = "::saas_core::__private::serde")]
        #[repr(transparent)]
        $vis struct $name($crate::__private::uuid::Uuid);

        impl $name {
            /// What this id names, used in error messages and problem bodies.
            pub const KIND: &'static str = $kind;

            /// Mints a new id (UUIDv7: ordered by creation time).
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self($crate::id::new_v7())
            }

            /// Wraps an existing UUID (for example one read from elsewhere).
            pub const fn from_uuid(uuid: $crate::__private::uuid::Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> &$crate::__private::uuid::Uuid {
                &self.0
            }

            /// Unwraps into the underlying UUID.
            pub const fn into_uuid(self) -> $crate::__private::uuid::Uuid {
                self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                $crate::id::fmt_uuid(&self.0, f)
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(concat!(stringify!($name), "("))?;
                $crate::id::fmt_uuid(&self.0, f)?;
                f.write_str(")")
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::id::IdParseError;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                $crate::id::parse_uuid($kind, s).map(Self)
            }
        }

        impl ::std::convert::From<$name> for $crate::__private::uuid::Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl $crate::__private::sqlx::Type<$crate::__private::sqlx::Postgres> for $name {
            fn type_info() -> $crate::__private::sqlx::postgres::PgTypeInfo {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::Type<
                    $crate::__private::sqlx::Postgres,
                >>::type_info()
            }
            fn compatible(ty: &$crate::__private::sqlx::postgres::PgTypeInfo) -> bool {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::Type<
                    $crate::__private::sqlx::Postgres,
                >>::compatible(ty)
            }
        }

        impl $crate::__private::sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> $crate::__private::sqlx::postgres::PgTypeInfo {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> $crate::__private::sqlx::Encode<'q, $crate::__private::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut $crate::__private::sqlx::postgres::PgArgumentBuffer,
            ) -> ::std::result::Result<
                $crate::__private::sqlx::encode::IsNull,
                $crate::__private::sqlx::error::BoxDynError,
            > {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::Encode<
                    'q,
                    $crate::__private::sqlx::Postgres,
                >>::encode_by_ref(&self.0, buf)
            }
        }

        impl<'r> $crate::__private::sqlx::Decode<'r, $crate::__private::sqlx::Postgres> for $name {
            fn decode(
                value: $crate::__private::sqlx::postgres::PgValueRef<'r>,
            ) -> ::std::result::Result<Self, $crate::__private::sqlx::error::BoxDynError> {
                <$crate::__private::uuid::Uuid as $crate::__private::sqlx::Decode<
                    'r,
                    $crate::__private::sqlx::Postgres,
                >>::decode(value)
                .map(Self)
            }
        }
    };
}

define_id!(
    /// A tenant: the customer organisation that owns data.
    pub struct TenantId("tenant");
);
define_id!(
    /// A user, known across tenants.
    pub struct UserId("user");
);
define_id!(
    /// An API key.
    pub struct ApiKeyId("api_key");
);
define_id!(
    /// A record in the audit log.
    pub struct AuditId("audit");
);
define_id!(
    /// An event in the outbox.
    pub struct EventId("event");
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_display_and_serde() {
        let id = TenantId::new();
        let s = id.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(s.parse::<TenantId>(), Ok(id));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<TenantId>(&json).unwrap(), id);
        assert_eq!(id.as_uuid().get_version_num(), 7);
    }

    #[test]
    fn ids_are_ordered_by_creation() {
        let ids: Vec<UserId> = (0..10_000).map(|_| UserId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!("".parse::<TenantId>(), Err(IdParseError::Empty { kind: "tenant" }));
        let err = "drop table tenants".parse::<TenantId>().unwrap_err();
        assert!(matches!(err, IdParseError::Malformed { kind: "tenant", .. }));
        assert!(err.to_string().contains("tenant id"));
        let huge = "a".repeat(100_000);
        match huge.parse::<UserId>().unwrap_err() {
            IdParseError::Malformed { input, .. } => assert_eq!(input.len(), 64),
            other => panic!("unexpected {other:?}"),
        }
        assert!(serde_json::from_str::<TenantId>("\"nope\"").is_err());
        assert!(serde_json::from_str::<TenantId>("42").is_err());
    }

    #[test]
    fn debug_names_the_kind() {
        let id = ApiKeyId::from_uuid(uuid::Uuid::nil());
        assert_eq!(format!("{id:?}"), "ApiKeyId(00000000-0000-0000-0000-000000000000)");
    }
}
