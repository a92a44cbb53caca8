//! Errors.

use saas_core::problem::{IntoProblem, Problem};

/// A definition saas-flags refuses to save (nothing is saved).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionError {
    /// The name is empty, longer than 200 characters or has control characters.
    #[error("invalid flag name {name:?}: 1-200 characters without control characters")]
    InvalidName {
        /// The name (cut to 200 characters).
        name: String,
    },
    /// Two flags with one name.
    #[error("flag {flag:?} is defined twice")]
    Duplicate {
        /// The flag.
        flag: String,
    },
    /// An operator Unleash does not have.
    #[error("flag {flag:?}: unknown constraint operator {operator:?}")]
    UnknownOperator {
        /// The flag.
        flag: String,
        /// The operator.
        operator: String,
    },
    /// A strategy saas-flags does not implement.
    #[error("flag {flag:?}: unknown strategy {strategy:?}")]
    UnknownStrategy {
        /// The flag.
        flag: String,
        /// The strategy name.
        strategy: String,
    },
    /// A strategy parameter is missing or unusable.
    #[error("flag {flag:?}, strategy {strategy}: parameter {parameter:?} = {value:?}: {reason}")]
    Parameter {
        /// The flag.
        flag: String,
        /// The strategy's position.
        strategy: usize,
        /// The parameter.
        parameter: String,
        /// Its value.
        value: String,
        /// What it should be.
        reason: &'static str,
    },
    /// A constraint's value is unusable for its operator.
    #[error("flag {flag:?}: constraint {context_name} {operator} {value:?}: {reason}")]
    Value {
        /// The flag.
        flag: String,
        /// The context field.
        context_name: String,
        /// The operator.
        operator: String,
        /// The value.
        value: String,
        /// What it should be.
        reason: &'static str,
    },
    /// Variant weights are unusable.
    #[error("flag {flag:?}{}: {reason}", strategy.map(|s| format!(", strategy {s}")).unwrap_or_default())]
    Weights {
        /// The flag.
        flag: String,
        /// The strategy, for strategy variants.
        strategy: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// A strategy names a segment that does not exist.
    #[error("flag {flag:?}: unknown segment {segment}")]
    UnknownSegment {
        /// The flag.
        flag: String,
        /// The segment id.
        segment: i32,
    },
    /// A dependency that cannot hold.
    #[error("flag {flag:?} depends on {parent:?}: {reason}")]
    Dependency {
        /// The flag.
        flag: String,
        /// The parent.
        parent: String,
        /// Why not.
        reason: &'static str,
    },
}

impl IntoProblem for DefinitionError {
    fn to_problem(&self) -> Problem {
        Problem::unprocessable(self.to_string()).with_type("invalid-flag")
    }
}

/// A flag store or admin operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// The definition is invalid; nothing was saved.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// No such flag (or it is archived).
    #[error("no flag named {0:?}")]
    NotFound(String),
    /// A flag with that name exists (possibly archived).
    #[error("a flag named {0:?} exists")]
    Exists(String),
    /// Someone else changed the flag since it was read.
    #[error("flag {name:?} is at version {actual}, not {expected}")]
    VersionConflict {
        /// The flag.
        name: String,
        /// The version the caller read.
        expected: i64,
        /// The current version.
        actual: i64,
    },
    /// The environment is not one the store knows.
    #[error("unknown environment {0:?}")]
    UnknownEnvironment(String),
    /// An Unleash payload could not be read.
    #[error("unreadable Unleash payload: {0}")]
    Payload(String),
    /// The snapshot file could not be read or written.
    #[error("snapshot file {path}: {reason}")]
    Snapshot {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The platform transaction could not begin or end.
    #[error(transparent)]
    Tenancy(#[from] saas_tenancy::TenancyError),
    /// The audit log refused.
    #[error(transparent)]
    Audit(#[from] saas_core::audit::AuditError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoProblem for FlagError {
    fn to_problem(&self) -> Problem {
        match self {
            FlagError::Definition(e) => e.to_problem(),
            FlagError::NotFound(_) => Problem::not_found()
                .with_type("flag-not-found")
                .with_detail(self.to_string()),
            FlagError::Exists(_) => Problem::conflict(self.to_string()).with_type("flag-exists"),
            FlagError::VersionConflict { .. } => Problem::conflict(self.to_string()).with_type("flag-version-conflict"),
            FlagError::UnknownEnvironment(_) | FlagError::Payload(_) => {
                Problem::unprocessable(self.to_string()).with_type("invalid-flag")
            }
            FlagError::Audit(e) => e.to_problem(),
            FlagError::Tenancy(e) => e.to_problem(),
            FlagError::Database(e) => e.to_problem(),
            FlagError::Snapshot { .. } => Problem::internal().with_internal(self),
        }
    }
}
