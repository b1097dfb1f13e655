//! A streamed engine answer (`/completion`, `/v1/chat/completions`) on an HTTP/1.1 connection of
//! its own, driven by the task that reads the answer.
//!
//! A pooled client runs each connection in a task of its own, which hands every chunk it reads to
//! the reader's task: one more wakeup, often on another worker thread, per token. Here the reader
//! polls the connection itself before the body, so a token read from the socket reaches the
//! reader in the same poll. Each answer gets a fresh connection, as before (ENGINE.md §8.14: a
//! reused keep-alive connection can be closed by the engine before it answers), and dropping the
//! stream closes it, which is how the engine learns of a cancel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// The connection half hyper hands back, boxed so the stream stays `Unpin`.
type Conn = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// The body of a streamed answer as byte chunks; an error is the cause chain as text.
pub struct Streamed {
    conn: Option<Conn>,
    body: Incoming,
}

/// Why no stream was opened.
#[derive(Debug)]
pub enum OpenError {
    /// Not an `http://host:port` base URL.
    Url(String),
    /// No connection, or it broke before the answer's head.
    Connect(String),
    /// The engine answered with a non-success status and this body.
    Status(u16, String),
}

/// Splits `http://host:port[/...]` into the `host:port` authority; `None` for anything else
/// (an `https` engine goes through the pooled client).
pub fn authority(base: &str) -> Option<&str> {
    let rest = base.strip_prefix("http://")?;
    let auth = rest.split('/').next()?;
    (!auth.is_empty() && auth.contains(':')).then_some(auth)
}

/// POSTs `body` (JSON) to `path` on the engine at `authority` with `bearer`, and returns the
/// answer's body once its head says success.
pub async fn open(
    authority: &str,
    path: &str,
    bearer: &str,
    body: Vec<u8>,
) -> Result<Streamed, OpenError> {
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| OpenError::Connect(format!("connecting to {authority}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| OpenError::Connect(api::error::chain(&e)))?;
    let mut conn: Conn = Box::pin(conn);
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {bearer}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| OpenError::Url(e.to_string()))?;
    let send = sender.send_request(req);
    tokio::pin!(send);
    // The connection is driven here until the head arrives; it cannot finish first unless it
    // failed, and then the request fails too.
    let mut conn_done = false;
    let resp = loop {
        tokio::select! {
            r = &mut send => break r.map_err(|e| OpenError::Connect(api::error::chain(&e)))?,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                if let Err(e) = c {
                    return Err(OpenError::Connect(api::error::chain(&e)));
                }
            }
        }
    };
    let status = resp.status();
    let mut streamed = Streamed {
        conn: (!conn_done).then_some(conn),
        body: resp.into_body(),
    };
    if !status.is_success() {
        let mut text = Vec::new();
        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut streamed).await {
            text.extend_from_slice(&chunk);
            if text.len() > 64 * 1024 {
                break;
            }
        }
        return Err(OpenError::Status(
            status.as_u16(),
            String::from_utf8_lossy(&text).into_owned(),
        ));
    }
    Ok(streamed)
}

impl futures::Stream for Streamed {
    type Item = Result<Bytes, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // The connection first: it reads what the socket holds and hands it to the body.
        if let Some(conn) = this.conn.as_mut() {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                this.conn = None;
                if let Err(e) = r {
                    // The body reports the same failure (or ends); keep the cause for the caller
                    // if it does not.
                    if this.body.is_end_stream() {
                        return Poll::Ready(Some(Err(api::error::chain(&e))));
                    }
                }
            }
        }
        loop {
            return match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    // Trailers carry nothing we read.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(api::error::chain(&e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn authority_of_http_bases_only() {
        assert_eq!(authority("http://127.0.0.1:8081"), Some("127.0.0.1:8081"));
        assert_eq!(authority("http://localhost:9/x"), Some("localhost:9"));
        assert_eq!(authority("https://127.0.0.1:8081"), None);
        assert_eq!(authority("http://host-without-port"), None);
    }

    /// A one-shot HTTP server: answers the first request with `head` and then each of `chunks`
    /// (chunked encoding), `gap` apart; returns the request it read.
    async fn serve_once(
        head: &'static str,
        chunks: Vec<&'static str>,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut req = Vec::new();
            while !String::from_utf8_lossy(&req).contains("\r\n\r\n{}") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(head.as_bytes()).await.unwrap();
            for c in chunks {
                s.write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            s.write_all(b"0\r\n\r\n").await.unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        (addr, h)
    }

    #[tokio::test]
    async fn streams_each_chunk_and_sends_the_headers() {
        let (addr, server) = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            vec!["data: {\"a\":1}\n\n", "data: {\"a\":2}\n\n"],
        )
        .await;
        let s = open(&addr, "/completion", "k3y", b"{}".to_vec())
            .await
            .unwrap();
        let got: Vec<_> = s.map(|c| c.unwrap()).collect().await;
        assert_eq!(
            got.concat(),
            b"data: {\"a\":1}\n\ndata: {\"a\":2}\n\n".to_vec()
        );
        let req = server.await.unwrap().to_lowercase();
        assert!(req.starts_with("post /completion http/1.1"), "{req}");
        assert!(req.contains("authorization: bearer k3y"), "{req}");
        assert!(req.contains(&format!("host: {addr}")), "{req}");
        assert!(req.contains("content-type: application/json"), "{req}");
    }

    #[tokio::test]
    async fn a_refusal_carries_its_status_and_body() {
        let (addr, _server) = serve_once(
            "HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            vec!["{\"error\":{\"message\":\"no\"}}"],
        )
        .await;
        match open(&addr, "/completion", "k", b"{}".to_vec()).await {
            Err(OpenError::Status(400, body)) => assert!(body.contains("\"no\""), "{body}"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("a 400 opened a stream"),
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = open(
            &format!("127.0.0.1:{port}"),
            "/completion",
            "k",
            b"{}".to_vec(),
        )
        .await;
        assert!(matches!(r, Err(OpenError::Connect(_))));
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await
                .unwrap();
            // Gone without the last chunk.
        });
        let mut s = open(&addr, "/completion", "k", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b"hello")
        );
        let rest: Vec<_> = s.collect().await;
        assert!(rest.iter().any(Result::is_err), "{rest:?}");
    }
}
