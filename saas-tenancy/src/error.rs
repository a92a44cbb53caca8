//! Errors of tenant data access and lifecycle.

use saas_core::audit::AuditError;
use saas_core::problem::{IntoProblem, Problem};

/// A tenancy operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenancyError {
    /// The database refused or failed.
    #[error("database operation failed: {0}")]
    Database(#[from] sqlx::Error),
    /// Writing the audit record failed (and so did the change it records).
    #[error("audit record failed: {0}")]
    Audit(#[from] AuditError),
    /// A system transaction's reason is not a plain label.
    #[error("system transaction reason {0:?} must be 3-64 characters of a-z, 0-9, -, _, . or :")]
    InvalidReason(&'static str),
    /// A slug is not a DNS label.
    #[error("tenant slug {0:?} must be 1-63 lower-case letters, digits or inner hyphens")]
    InvalidSlug(String),
    /// A name is empty or too long.
    #[error("tenant name must be 1-200 characters")]
    InvalidName,
    /// The slug is taken.
    #[error("tenant slug {0:?} is taken")]
    SlugTaken(String),
    /// No such tenant.
    #[error("no such tenant")]
    NotFound,
    /// The lifecycle does not allow this change from the tenant's status.
    #[error("a {from} tenant cannot be {action}")]
    InvalidTransition {
        /// The current status.
        from: &'static str,
        /// The attempted action.
        action: &'static str,
    },
    /// A support session request is outside the allowed bounds.
    #[error("support session: {0}")]
    InvalidSupportSession(String),
    /// Writing an export failed.
    #[error("export failed: {0}")]
    Export(#[from] std::io::Error),
}

impl IntoProblem for TenancyError {
    fn to_problem(&self) -> Problem {
        match self {
            TenancyError::Database(e) => e.to_problem(),
            TenancyError::Audit(e) => e.to_problem(),
            TenancyError::InvalidReason(_) | TenancyError::Export(_) => Problem::internal().with_internal(self),
            TenancyError::InvalidSlug(_) | TenancyError::InvalidName | TenancyError::InvalidSupportSession(_) => {
                Problem::unprocessable(self.to_string()).with_type("invalid-tenant-input")
            }
            TenancyError::SlugTaken(_) => Problem::conflict(self.to_string()).with_type("slug-taken"),
            TenancyError::NotFound => Problem::not_found(),
            TenancyError::InvalidTransition { .. } => {
                Problem::conflict(self.to_string()).with_type("invalid-tenant-transition")
            }
        }
    }
}
