//! Test helpers (feature `testkit`): a real SMTP server on loopback that keeps what it
//! receives, for tests of code that sends e-mail.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One message an [`SmtpSink`] received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// The envelope sender (`MAIL FROM`).
    pub from: String,
    /// The envelope recipients (`RCPT TO`).
    pub to: Vec<String>,
    /// The message as sent (headers and body, dot-unstuffed lines joined by `\n`).
    pub data: String,
}

impl Received {
    /// The message with quoted-printable soft line breaks removed and `=3D` decoded:
    /// enough to find a link in a body that lettre encoded.
    pub fn decoded(&self) -> String {
        self.data.replace("=\n", "").replace("=3D", "=")
    }
}

/// A minimal SMTP server on `127.0.0.1`: accepts every message (except to one address it
/// may refuse with 550, a permanent failure) and keeps it. It stops when dropped.
#[derive(Debug, Clone)]
pub struct SmtpSink {
    received: Arc<Mutex<Vec<Received>>>,
    port: u16,
    _task: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SmtpSink {
    /// Starts a sink on a free port; `reject` is an address answered with 550.
    pub async fn start(reject: Option<&str>) -> std::io::Result<Self> {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let got = Arc::clone(&received);
        let reject = reject.map(str::to_owned);
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(session(sock, Arc::clone(&got), reject.clone()));
            }
        });
        Ok(SmtpSink {
            received,
            port,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

async fn session(sock: tokio::net::TcpStream, got: Arc<Mutex<Vec<Received>>>, reject: Option<String>) {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    if w.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    let mut cur = Received::default();
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("HELO") || upper.starts_with("RSET") || upper.starts_with("NOOP") {
            b"250 ok\r\n"
        } else if let Some(from) = line.get(10..).filter(|_| upper.starts_with("MAIL FROM:")) {
            cur = Received {
                from: from.trim().to_owned(),
                ..Received::default()
            };
            b"250 ok\r\n"
        } else if let Some(rcpt) = line.get(8..).filter(|_| upper.starts_with("RCPT TO:")) {
            let rcpt = rcpt.trim().trim_matches(|c| c == '<' || c == '>').to_owned();
            if reject.as_deref() == Some(rcpt.as_str()) {
                b"550 no such user\r\n"
            } else {
                cur.to.push(rcpt);
                b"250 ok\r\n"
            }
        } else if upper == "DATA" {
            if w.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut data = String::new();
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').filter(|_| l.starts_with("..")).unwrap_or(&l));
                data.push('\n');
            }
            cur.data = data;
            got.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(std::mem::take(&mut cur));
            b"250 queued\r\n"
        } else if upper == "QUIT" {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"502 not implemented\r\n"
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}
