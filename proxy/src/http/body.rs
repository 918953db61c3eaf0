//! The body types that flow through the proxy: request bodies forwarded upstream (streamed, or
//! replayable for retries) and response bodies sent downstream (streamed from upstream, or a
//! local reply), without buffering whole bodies.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

// === RequestBody ===

/// A request body on its way upstream.
pub enum RequestBody {
    Empty,
    Incoming(Incoming),
    Replay(ReplayBody),
    /// The body of the first attempt, copied to request mirrors as it streams.
    Tee(Box<TeeBody>),
    /// A mirror's copy.
    Mirror(MirrorBody),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Replay(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Tee(b) => Pin::new(b.as_mut()).poll_frame(cx),
            RequestBody::Mirror(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Incoming(b) => b.is_end_stream(),
            RequestBody::Replay(b) => b.is_end_stream(),
            RequestBody::Tee(b) => b.inner.is_end_stream(),
            RequestBody::Mirror(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Incoming(b) => b.size_hint(),
            RequestBody::Replay(b) => b.size_hint(),
            RequestBody::Tee(b) => b.inner.size_hint(),
            RequestBody::Mirror(b) => b.hint,
        }
    }
}

// === TeeBody, MirrorBody ===

/// Frames a mirror may fall behind by before it is dropped (the caller never waits on it).
const MIRROR_BACKLOG: usize = 64;

/// One mirror's end of a tee.
struct MirrorTx {
    tx: tokio::sync::mpsc::Sender<Frame<Bytes>>,
    aborted: Arc<std::sync::atomic::AtomicBool>,
}

/// The first attempt's body, copied frame by frame to request mirrors. A mirror that falls
/// behind, or a body that ends early, aborts that mirror's request instead of sending a
/// truncated body as if it were whole.
pub struct TeeBody {
    inner: RequestBody,
    copies: Vec<MirrorTx>,
    done: bool,
}

/// A mirror's copy of the request body.
pub struct MirrorBody {
    rx: tokio::sync::mpsc::Receiver<Frame<Bytes>>,
    aborted: Arc<std::sync::atomic::AtomicBool>,
    hint: SizeHint,
}

impl TeeBody {
    /// Tees `inner`; returns the tee and one body per mirror.
    pub fn new(inner: RequestBody, mirrors: usize) -> (TeeBody, Vec<MirrorBody>) {
        let hint = inner.size_hint();
        let mut copies = Vec::with_capacity(mirrors);
        let mut bodies = Vec::with_capacity(mirrors);
        for _ in 0..mirrors {
            let (tx, rx) = tokio::sync::mpsc::channel(MIRROR_BACKLOG);
            let aborted = Arc::new(std::sync::atomic::AtomicBool::new(false));
            copies.push(MirrorTx { tx, aborted: aborted.clone() });
            bodies.push(MirrorBody { rx, aborted, hint });
        }
        (TeeBody { inner, copies, done: false }, bodies)
    }

    fn abort_all(&mut self) {
        for c in self.copies.drain(..) {
            c.aborted.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        if !self.done {
            self.abort_all();
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.as_mut().get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                this.copies.retain(|c| {
                    let copy = match (frame.data_ref(), frame.trailers_ref()) {
                        (Some(d), _) => Frame::data(d.clone()),
                        (None, Some(t)) => Frame::trailers(t.clone()),
                        (None, None) => return true,
                    };
                    let sent = c.tx.try_send(copy).is_ok();
                    if !sent {
                        c.aborted.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    sent
                });
                // hyper stops polling once a body says it has ended (content-length reached).
                if this.inner.is_end_stream() {
                    this.done = true;
                    this.copies.clear();
                }
            }
            Poll::Ready(None) => {
                this.done = true;
                this.copies.clear();
            }
            Poll::Ready(Some(Err(_))) => this.abort_all(),
            Poll::Pending => {}
        }
        r
    }
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(f)) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(None) if this.aborted.load(std::sync::atomic::Ordering::Relaxed) => {
                Poll::Ready(Some(Err("the mirrored request body did not arrive whole".into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

// === ReplayBody ===

struct ReplayState {
    source: Option<Incoming>,
    chunks: Vec<Bytes>,
    buffered: usize,
    limit: usize,
    /// More than `limit` bytes went through: the body can no longer be replayed.
    overflowed: bool,
    trailers: Option<HeaderMap>,
    done: bool,
    /// Only the attempt with the current generation may read.
    generation: u64,
    hint: SizeHint,
}

/// A request body that is streamed to the first attempt while a copy is kept (up to a limit),
/// so a retry can send it again. Only one attempt reads at a time; starting a new attempt
/// detaches the previous one.
pub struct ReplayBody {
    state: Arc<Mutex<ReplayState>>,
    generation: u64,
    position: usize,
    trailers_sent: bool,
}

impl ReplayBody {
    pub fn new(source: Incoming, limit: usize) -> Self {
        let hint = source.size_hint();
        ReplayBody {
            state: Arc::new(Mutex::new(ReplayState {
                source: Some(source),
                chunks: Vec::new(),
                buffered: 0,
                limit,
                overflowed: false,
                trailers: None,
                done: false,
                generation: 0,
                hint,
            })),
            generation: 0,
            position: 0,
            trailers_sent: false,
        }
    }

    /// A fresh reader for the next attempt, or None when the body was too large to keep.
    pub fn replay(&self) -> Option<ReplayBody> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.overflowed {
            return None;
        }
        s.generation += 1;
        Some(ReplayBody { state: self.state.clone(), generation: s.generation, position: 0, trailers_sent: false })
    }

    /// True once the source body has been read to its end.
    pub fn source_done(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).done
    }

    pub fn can_replay(&self) -> bool {
        !self.state.lock().unwrap_or_else(|p| p.into_inner()).overflowed
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut s = this.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.generation != this.generation {
            return Poll::Ready(Some(Err("request body superseded by a retry".into())));
        }
        if this.position < s.chunks.len() {
            let c = s.chunks[this.position].clone();
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        if s.done {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(src) = s.source.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(src).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.done = true;
                s.source = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !s.overflowed {
                        s.buffered += data.len();
                        if s.buffered > s.limit {
                            s.overflowed = true;
                            s.chunks.clear();
                        } else {
                            s.chunks.push(data.clone());
                        }
                    }
                    // Keep `position` aligned with the stored chunks.
                    this.position = s.chunks.len();
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        s.trailers = Some(t.clone());
                        s.done = true;
                        s.source = None;
                        this.trailers_sent = true;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.done && self.position >= s.chunks.len() && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).hint
    }
}

// === Stream activity ===

/// A downstream connection's streams in flight, for the HTTP connection manager's idle
/// timeout: a stream counts from its request until its response body is dropped (sent, or
/// abandoned).
#[derive(Default)]
pub struct Activity {
    active: std::cell::Cell<u32>,
    idle_since: std::cell::Cell<Option<std::time::Instant>>,
    /// Woken when the last stream ends.
    pub idle: tokio::sync::Notify,
}

impl Activity {
    /// A new connection: idle from now.
    pub fn new() -> Self {
        Activity { idle_since: std::cell::Cell::new(Some(std::time::Instant::now())), ..Activity::default() }
    }

    pub fn start(self: &std::rc::Rc<Self>) -> ActiveStream {
        self.active.set(self.active.get() + 1);
        self.idle_since.set(None);
        ActiveStream(self.clone())
    }

    /// When the connection last became idle (None while a stream is active or before the first).
    pub fn idle_since(&self) -> Option<std::time::Instant> {
        if self.active.get() == 0 { self.idle_since.get() } else { None }
    }
}

/// One stream of an `Activity`, counted until dropped.
pub struct ActiveStream(std::rc::Rc<Activity>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        let n = self.0.active.get().saturating_sub(1);
        self.0.active.set(n);
        if n == 0 {
            self.0.idle_since.set(Some(std::time::Instant::now()));
            self.0.idle.notify_one();
        }
    }
}

// === ResponseBody ===

/// Called once when an upstream response body ends cleanly (returns the connection to its pool).
pub type OnEnd = Box<dyn FnOnce()>;

/// A response body on its way downstream.
pub enum ResponseBody {
    Full(Option<Bytes>),
    /// A body transformed by a filter (compression).
    Boxed(Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>),
    Upstream {
        body: Incoming,
        on_end: Option<OnEnd>,
        _guards: Box<dyn std::any::Any>,
        /// The stream's timers: each frame is activity; a timer that passed resets the stream.
        timer: Option<crate::http::stream_timer::StreamTimer>,
    },
}

impl ResponseBody {
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }

    pub fn full(b: Bytes) -> Self {
        if b.is_empty() { ResponseBody::Full(None) } else { ResponseBody::Full(Some(b)) }
    }

    /// Streams an upstream body; `on_end` runs when it finishes cleanly; `guards` live as long
    /// as the body (active-request gauges and the like).
    pub fn upstream(
        body: Incoming,
        on_end: Option<OnEnd>,
        guards: Box<dyn std::any::Any>,
        timer: Option<crate::http::stream_timer::StreamTimer>,
    ) -> Self {
        let mut b = ResponseBody::Upstream { body, on_end, _guards: guards, timer };
        b.finish_if_ended();
        b
    }

    fn finish_if_ended(&mut self) {
        if let ResponseBody::Upstream { body, on_end, .. } = self
            && body.is_end_stream()
            && let Some(f) = on_end.take()
        {
            f();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Boxed(b) => b.as_mut().poll_frame(cx),
            ResponseBody::Upstream { body, on_end, timer, .. } => {
                if let Some(e) = timer.as_ref().and_then(|t| t.body_check(cx)) {
                    // A stream timer passed after the response started: Envoy resets the stream.
                    on_end.take();
                    *timer = None;
                    return Poll::Ready(Some(Err(Box::new(crate::http::stream_timer::TimedOut(e)))));
                }
                let r = Pin::new(&mut *body).poll_frame(cx);
                if let (Some(t), Poll::Ready(Some(Ok(_)))) = (timer.as_ref(), &r) {
                    t.touch();
                }
                match &r {
                    Poll::Ready(None) => {
                        if let Some(f) = on_end.take() {
                            f();
                        }
                    }
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        if let Some(f) = on_end.take() {
                            f();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        on_end.take();
                    }
                    _ => {}
                }
                r.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Boxed(b) => b.is_end_stream(),
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Boxed(b) => b.size_hint(),
            ResponseBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}
