//! A webhook receiver for the tests and the benchmark: a real HTTP server
//! on loopback (axum) that records every request and answers from a script
//! per path (`500` twice, then `200`, say), `200` once the script is done.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Inner {
    /// Per path: the answers still to give, with an optional Retry-After.
    script: HashMap<String, VecDeque<(u16, Option<u64>)>>,
    /// Per path, the answer once the script is done (default 200).
    otherwise: HashMap<String, u16>,
    received: Vec<Received>,
    /// Requests per path, for a cheap count.
    counts: HashMap<String, usize>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    pub addr: Option<SocketAddr>,
}

async fn record(
    State(receiver): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let mut inner = receiver.inner.lock().unwrap();
    let (status, retry_after) = inner
        .script
        .get_mut(&path)
        .and_then(VecDeque::pop_front)
        .unwrap_or_else(|| (*inner.otherwise.get(&path).unwrap_or(&200), None));
    *inner.counts.entry(path.clone()).or_default() += 1;
    inner.received.push(Received {
        at: Instant::now(),
        path,
        headers,
        body,
        status,
    });
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.to_string().parse().unwrap());
    }
    response
}

impl Receiver {
    /// Every path recorded and answered by its script.
    fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(record)
            .with_state(self.clone())
    }

    /// Starts serving on 127.0.0.1 (a free port) on the current runtime.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            addr: Some(listener.local_addr().unwrap()),
            ..Receiver::default()
        };
        let app = receiver.router();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    /// Starts serving HTTPS on 127.0.0.1 (a free port) with a certificate
    /// for `localhost` made now; answers it with the certificate's PEM, for
    /// the host to trust.
    pub async fn start_tls() -> (Receiver, String) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            addr: Some(listener.local_addr().unwrap()),
            ..Receiver::default()
        };
        let app = receiver.router();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (receiver, made.cert.pem())
    }

    /// `https://localhost:PORT/path` of a receiver from `start_tls`.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.unwrap().port())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.unwrap())
    }

    /// The next answers on `path`, in order.
    pub fn script(&self, path: &str, answers: &[(u16, Option<u64>)]) {
        self.inner
            .lock()
            .unwrap()
            .script
            .entry(path.to_owned())
            .or_default()
            .extend(answers.iter().copied());
    }

    /// What `path` answers once its script is done.
    pub fn otherwise(&self, path: &str, status: u16) {
        self.inner
            .lock()
            .unwrap()
            .otherwise
            .insert(path.to_owned(), status);
    }

    /// How many requests `path` has had.
    pub fn count(&self, path: &str) -> usize {
        *self.inner.lock().unwrap().counts.get(path).unwrap_or(&0)
    }

    /// Every request to `path` so far.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}
