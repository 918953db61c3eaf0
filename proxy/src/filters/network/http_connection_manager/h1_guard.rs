//! The downstream connection as hyper reads it, with Envoy's HTTP/1 codec checks in front
//! (`h1_scan`) and `request_headers_timeout`. A request the scanner refuses never reaches hyper:
//! the guard writes Envoy's local reply itself (431, 400, 501, or 408 when the header block does
//! not arrive in time), with `connection: close`, counts it as Envoy does, and closes the
//! connection after Envoy's delayed close (the client's remaining bytes are read and dropped for
//! up to a second, so the reply is not lost to a reset).
//!
//! The error path allocates; the pass-through path is one scan of the bytes hyper reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::config::{HttpConnectionManager, ServerHeader};
use super::h1_scan::{Scanner, Verdict};
use crate::http::stream_timer::H1Progress;

/// Envoy's default `delayed_close_timeout`.
const DELAYED_CLOSE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Codec(Verdict),
    HeaderTimeout,
}

struct Failing {
    reply: Vec<u8>,
    sent: usize,
    shut: bool,
    until: Pin<Box<Sleep>>,
}

pub(super) struct H1Guard<IO> {
    io: IO,
    hcm: Arc<HttpConnectionManager>,
    scan: Scanner,
    /// hyper wrote response bytes since the current header block began.
    wrote_since_head: bool,
    timer: Option<Pin<Box<Sleep>>>,
    timer_head: u32,
    /// Header blocks handed to hyper (the ones it counts itself).
    delivered: u32,
    fail: Option<Failing>,
    /// The request's progress, for the stream timers (`stream_timer`).
    progress: Option<Arc<H1Progress>>,
}

impl<IO> H1Guard<IO> {
    pub(super) fn new(
        io: IO,
        hcm: Arc<HttpConnectionManager>,
        enabled: bool,
        progress: Option<Arc<H1Progress>>,
    ) -> Self {
        let scan = Scanner::new(hcm.limits.scan, enabled);
        H1Guard {
            io,
            hcm,
            scan,
            wrote_since_head: false,
            timer: None,
            timer_head: 0,
            delivered: 0,
            fail: None,
            progress,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> H1Guard<IO> {
    /// Starts the local reply (or, when hyper already answered part of this request, just the
    /// close) and counts it.
    fn refuse(&mut self, why: Refusal) {
        // hyper never saw this request (its bytes are dropped): it is counted here.
        let unseen = self.scan.heads() != self.delivered;
        let (status, reason, body): (u16, &str, &str) = match why {
            Refusal::Codec(Verdict::TooLarge) => {
                (431, "Request Header Fields Too Large", "Request Header Fields Too Large")
            }
            Refusal::Codec(Verdict::BadRequest) => (400, "Bad Request", "Bad Request"),
            Refusal::Codec(Verdict::NotImplemented) => (501, "Not Implemented", "Not Implemented"),
            Refusal::HeaderTimeout => (408, "Request Timeout", "request header timeout"),
        };
        let stats = &self.hcm.stats;
        match why {
            Refusal::Codec(_) => stats.downstream_cx_protocol_error.inc(),
            Refusal::HeaderTimeout => stats.downstream_rq_header_timeout.inc(),
        }
        let reply = if self.wrote_since_head {
            Vec::new()
        } else {
            if unseen {
                stats.downstream_rq_total.inc();
                stats.downstream_rq_http1_total.inc();
                if self.delivered == 0 {
                    stats.downstream_cx_http1_total.inc();
                }
            }
            stats.downstream_rq.record(status, false);
            stats.downstream_rq_completed.inc();
            if let Some((codes, completed)) = &stats.listener_rq {
                codes.record(status, false);
                completed.inc();
            }
            let server = match self.hcm.server_header {
                ServerHeader::PassThrough => None,
                _ => self.hcm.server_name.to_str().ok(),
            };
            render(status, reason, body, server)
        };
        self.timer = None;
        self.fail = Some(Failing { reply, sent: 0, shut: false, until: Box::pin(tokio::time::sleep(DELAYED_CLOSE)) });
    }

    /// Writes the reply, half-closes, and drops what the client still sends until it closes or
    /// the delayed-close time ends; then the connection ends (an error to hyper).
    fn poll_fail(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(f) = self.fail.as_mut() else { return Poll::Ready(Ok(())) };
        let aborted = || Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "request refused")));
        while f.sent < f.reply.len() {
            match Pin::new(&mut self.io).poll_write(cx, &f.reply[f.sent..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return aborted(),
                Poll::Ready(Ok(n)) => f.sent += n,
                Poll::Pending => return if f.until.as_mut().poll(cx).is_ready() { aborted() } else { Poll::Pending },
            }
        }
        if !f.shut {
            match Pin::new(&mut self.io).poll_shutdown(cx) {
                Poll::Ready(_) => f.shut = true,
                Poll::Pending => return if f.until.as_mut().poll(cx).is_ready() { aborted() } else { Poll::Pending },
            }
        }
        let mut scratch = [0u8; 2048];
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => continue,
                Poll::Ready(_) => return aborted(),
                Poll::Pending => return if f.until.as_mut().poll(cx).is_ready() { aborted() } else { Poll::Pending },
            }
        }
    }

    /// Starts the request-headers timer when a header block is under way, stops it after.
    fn arm_timer(&mut self) {
        let Some(d) = self.hcm.limits.request_headers_timeout else { return };
        if !self.scan.in_head() {
            self.timer = None;
        } else if self.timer.is_none() || self.timer_head != self.scan.heads() {
            self.timer_head = self.scan.heads();
            self.timer = Some(Box::pin(tokio::time::sleep(d)));
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Guard<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.fail.is_some() {
                return this.poll_fail(cx);
            }
            if this.scan.passthrough() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    let heads = this.scan.heads();
                    let r = this.scan.feed(&buf.filled()[before..]);
                    if this.scan.heads() != heads {
                        this.wrote_since_head = false;
                    }
                    match r {
                        Ok(()) => {
                            // Complete header blocks reach hyper's parser with these bytes.
                            this.delivered = this.scan.heads().wrapping_sub(u32::from(this.scan.in_head()));
                            this.arm_timer();
                            if let Some(p) = &this.progress
                                && buf.filled().len() > before
                            {
                                p.read(this.scan.in_body());
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Err(v) => {
                            buf.set_filled(before);
                            this.refuse(Refusal::Codec(v));
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if let Some(t) = this.timer.as_mut()
                        && t.as_mut().poll(cx).is_ready()
                    {
                        this.refuse(Refusal::HeaderTimeout);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H1Guard<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.fail.is_some() {
            // The connection is closing with the guard's reply: hyper's bytes are dropped.
            return Poll::Ready(Ok(data.len()));
        }
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, data))?;
        this.wrote_since_head |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.fail.is_some() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        this.wrote_since_head |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fail.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.fail.is_some() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Envoy's local reply from its HTTP/1 codec, byte for byte (the date is the only part that
/// changes).
fn render(status: u16, reason: &str, body: &str, server: Option<&str>) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(192);
    let _ = write!(
        s,
        "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\ndate: {}\r\n",
        body.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now())
    );
    if let Some(server) = server {
        let _ = write!(s, "server: {server}\r\n");
    }
    s.push_str("connection: close\r\n\r\n");
    s.push_str(body);
    s.into_bytes()
}
