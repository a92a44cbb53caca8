//! The edge that makes every error response a problem+json body with the request id.
//!
//! [`ProblemLayer`] goes inside [`RequestIdLayer`](crate::request_id::RequestIdLayer). On
//! the way out it:
//! - adds `request_id` to every [`Problem`] rendered by an inner layer or handler;
//! - turns an error status with an empty or plain-text body (an unmatched route, a bare
//!   `StatusCode::FORBIDDEN`, a framework's rejection) into the matching problem;
//! - replaces the body of any 5xx response that is not a problem (a plain-text error
//!   that might carry internals) with an opaque internal problem.
//!
//! ```
//! use http::StatusCode;
//! use saas_core::problem_layer::ProblemLayer;
//! use saas_core::request_id::RequestIdLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use http_body_util::{BodyExt, Full};
//! use bytes::Bytes;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .layer(ProblemLayer::new())
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         let mut res = http::Response::new(Full::<Bytes>::from("db password is hunter2"));
//!         *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
//!         Ok::<_, std::convert::Infallible>(res)
//!     }));
//! let req = http::Request::builder().header("x-request-id", "r-1").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let body = String::from_utf8(body.to_vec()).unwrap();
//! assert!(body.contains("\"request_id\":\"r-1\""));
//! assert!(!body.contains("hunter2"));
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::problem::{CONTENT_TYPE_PROBLEM, Problem, RenderedProblem};
use crate::request_id::RequestId;

/// Renders error responses as problems carrying the request id. See the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProblemLayer {
    _priv: (),
}

impl ProblemLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ProblemLayer {
    type Service = ProblemService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ProblemService { inner }
    }
}

/// The service made by [`ProblemLayer`].
#[derive(Clone, Debug)]
pub struct ProblemService<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ProblemService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body + From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let request_id = req.extensions().get::<RequestId>().cloned();
        ResponseFuture {
            inner: self.inner.call(req),
            request_id,
        }
    }
}

pin_project! {
    /// The response future of [`ProblemService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        request_id: Option<RequestId>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body + From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(finish(res, this.request_id.as_ref())))
    }
}

fn is_problem_body(res: &Response<impl Body>) -> bool {
    res.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(CONTENT_TYPE_PROBLEM.as_bytes()))
}

fn is_plain_text(res: &Response<impl Body>) -> bool {
    res.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"))
}

fn finish<B: Body + From<Bytes>>(res: Response<B>, request_id: Option<&RequestId>) -> Response<B> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let problem = if let Some(RenderedProblem(p)) = res.extensions().get::<RenderedProblem>() {
        if request_id.is_none() || p.extension("request_id").is_some() {
            return res;
        }
        p.clone()
    } else if status.is_server_error() && !is_problem_body(&res) {
        Problem::new(status).with_internal("a 5xx response without a problem body was replaced")
    } else if res.body().size_hint().exact() == Some(0) || is_plain_text(&res) {
        // Framework rejections (body too large, unparsable JSON, wrong method) come as
        // plain text: answer them in the same problem format as everything else.
        Problem::new(status)
    } else {
        return res;
    };
    let problem = match request_id {
        Some(id) => problem.with_request_id(id),
        None => problem,
    };
    let (mut parts, _old_body) = res.into_parts();
    let body = Bytes::from(problem.to_json());
    parts
        .headers
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE_PROBLEM));
    parts.headers.remove(CONTENT_LENGTH);
    for (name, value) in problem.headers() {
        if !parts.headers.contains_key(name) {
            parts.headers.insert(name, value.clone());
        }
    }
    parts.extensions.insert(RenderedProblem(problem));
    Response::from_parts(parts, B::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    async fn run(res: Response<Full<Bytes>>, id: Option<&str>) -> (Response<()>, serde_json::Value) {
        let svc = ServiceBuilder::new()
            .layer(crate::request_id::RequestIdLayer::new())
            .layer(ProblemLayer::new())
            .service(service_fn(move |_req: Request<()>| {
                let res = res.clone();
                async move { Ok::<_, std::convert::Infallible>(res) }
            }));
        let mut req = Request::builder();
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        let res = svc.oneshot(req.body(()).unwrap()).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (Response::from_parts(parts, ()), json)
    }

    fn status(s: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::from(body));
        *r.status_mut() = s;
        r
    }

    #[tokio::test]
    async fn adds_request_id_to_rendered_problems() {
        let res = Problem::forbidden("nope").with_type("permission-denied").into_http();
        let (res, v) = run(res, Some("req-9")).await;
        assert_eq!(res.status(), 403);
        assert_eq!(res.headers()["x-request-id"], "req-9");
        assert_eq!(v["request_id"], "req-9");
        assert_eq!(v["type"], "urn:saas-kit:problem:permission-denied");
        assert_eq!(v["detail"], "nope");
    }

    #[tokio::test]
    async fn empty_error_bodies_become_problems() {
        let (res, v) = run(status(StatusCode::NOT_FOUND, ""), None).await;
        assert_eq!(res.headers()[CONTENT_TYPE], CONTENT_TYPE_PROBLEM);
        assert_eq!(v["status"], 404);
        let minted = res.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(v["request_id"], minted);
    }

    #[tokio::test]
    async fn plain_server_errors_are_replaced() {
        let (res, v) = run(status(StatusCode::BAD_GATEWAY, "upstream 10.1.2.3 said no"), Some("x")).await;
        assert_eq!(res.status(), 502);
        assert!(!v.to_string().contains("10.1.2.3"));
        assert_eq!(v["request_id"], "x");
    }

    #[tokio::test]
    async fn success_and_non_empty_client_errors_pass_through() {
        let (res, v) = run(status(StatusCode::OK, "{\"ok\":true}"), None).await;
        assert_eq!(res.status(), 200);
        assert_eq!(v["ok"], true);
        let (_, v) = run(status(StatusCode::BAD_REQUEST, "{\"own\":1}"), None).await;
        assert_eq!(v["own"], 1);
    }
}
