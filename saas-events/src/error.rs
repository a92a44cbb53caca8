//! Errors.

use saas_core::problem::{IntoProblem, Problem};

/// Publishing failed; the caller's transaction should roll back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event could not be serialised.
    #[error("the event could not be serialised: {0}")]
    Serialize(#[source] serde_json::Error),
    /// Options out of range.
    #[error("invalid publish options: {0}")]
    Invalid(&'static str),
    /// The database refused (including a tenant mismatch under row-level security).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoProblem for PublishError {
    fn to_problem(&self) -> Problem {
        match self {
            PublishError::Database(e) => e.to_problem(),
            _ => Problem::internal().with_internal(self),
        }
    }
}

/// A job operation (admin, worker start) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobsError {
    /// No such job (or not in a state the operation applies to).
    #[error("no such job")]
    NotFound,
    /// A schedule's cron expression does not parse.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron {
        /// The expression.
        expr: String,
        /// Why.
        reason: String,
    },
    /// The platform transaction failed.
    #[error(transparent)]
    Tenancy(#[from] saas_tenancy::TenancyError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoProblem for JobsError {
    fn to_problem(&self) -> Problem {
        match self {
            JobsError::NotFound => Problem::not_found().with_type("job-not-found"),
            JobsError::Cron { .. } => Problem::unprocessable(self.to_string()).with_type("invalid-schedule"),
            JobsError::Tenancy(e) => e.to_problem(),
            JobsError::Database(e) => e.to_problem(),
        }
    }
}
