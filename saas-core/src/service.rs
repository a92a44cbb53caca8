//! Small pieces shared by saas-kit's tower middleware.

use std::future::Future;
use std::pin::Pin;

/// The boxed response future of a middleware whose work is asynchronous on both sides of
/// the inner call (rate limits, idempotency, tenant resolution, catch-panic).
pub type BoxResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Takes the service that `poll_ready` just readied, leaving a fresh clone in its place:
/// tower's pattern for a middleware whose future owns the inner service.
pub fn take_ready<S: Clone>(service: &mut S) -> S {
    let clone = service.clone();
    std::mem::replace(service, clone)
}
