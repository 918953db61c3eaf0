//! The HTTP connection manager's per-stream timers, as Envoy's `ActiveStream` arms them:
//! `stream_idle_timeout` (or the route's `idle_timeout`), `request_timeout`, and the stream's
//! maximum duration (`common_http_protocol_options.max_stream_duration`, or the route's
//! `max_stream_duration`), plus the router's `per_try_idle_timeout` once the response streams.
//!
//! A connection has one `StreamTimers`: a slot per stream in flight (a `Vec` reused across
//! requests, so a request allocates nothing) and one tokio timer, on the connection task, set
//! to the earliest deadline of its streams. Activity only writes a timestamp; the timer is moved
//! when it fires early (lazily) or when a stream is opened or its deadlines change. When a
//! deadline passes, the stream's slot is marked expired and its task woken: before the response
//! the connection manager answers (408/504), after it the response body ends in an error (the
//! stream is reset, an HTTP/1 connection closed), as Envoy does.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use crate::stats::Counter;

/// Which timer ended a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `stream_idle_timeout` or the route's `idle_timeout`.
    Idle,
    /// `request_timeout`: the whole request did not arrive in time.
    Request,
    /// The stream's maximum duration.
    Duration,
    /// The router's `per_try_idle_timeout` while the response body streams.
    UpstreamIdle,
}

impl Expiry {
    /// Envoy's response flag for it.
    pub fn flag(self) -> &'static str {
        match self {
            Expiry::Idle => "SI",
            Expiry::Request => "",
            // Envoy 1.40 sets no flag for the connection manager's stream duration.
            Expiry::Duration => "",
            Expiry::UpstreamIdle => "UT",
        }
    }

    /// Envoy's response code details for it.
    pub fn details(self) -> &'static str {
        match self {
            Expiry::Idle => "stream_idle_timeout",
            Expiry::Request => "request_overall_timeout",
            Expiry::Duration => "max_duration_timeout",
            Expiry::UpstreamIdle => "upstream_per_try_idle_timeout",
        }
    }
}

/// The error a response body ends with when a stream timer passed after the response started
/// (the access log reads the flag from it).
#[derive(Debug)]
pub struct TimedOut(pub Expiry);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream timer passed: {}", self.0.details())
    }
}

impl std::error::Error for TimedOut {}

/// The connection manager's counters the timers charge (`http.<prefix>.downstream_rq_*`).
#[derive(Default)]
pub struct TimerStats {
    pub idle: Option<Counter>,
    pub request: Option<Counter>,
    pub duration: Option<Counter>,
}

struct Slot {
    refs: u32,
    start: Instant,
    /// Last activity (request or response bytes) of the stream.
    last: Instant,
    idle: Option<Duration>,
    upstream_idle: Option<(Duration, Counter)>,
    request_deadline: Option<Instant>,
    duration_deadline: Option<Instant>,
    /// The request was received whole (Envoy's `remoteDecodeComplete`).
    request_complete: bool,
    expired: Option<Expiry>,
    waker: Option<Waker>,
    /// What the access log needs of the request, kept here while the stream runs so that a
    /// timer's local reply can still log it.
    parked: Option<Box<dyn std::any::Any>>,
}

impl Slot {
    fn next_deadline(&self) -> Option<Instant> {
        if self.refs == 0 || self.expired.is_some() {
            return None;
        }
        let idle = self.idle.map(|d| self.last + d);
        let up = self.upstream_idle.as_ref().map(|(d, _)| self.last + *d);
        let req = self.request_deadline.filter(|_| !self.request_complete);
        [idle, up, req, self.duration_deadline].into_iter().flatten().min()
    }

    /// The timer that passed by `now`, if any (the earliest first).
    fn due(&self, now: Instant) -> Option<Expiry> {
        if self.refs == 0 || self.expired.is_some() {
            return None;
        }
        let mut best: Option<(Instant, Expiry)> = None;
        let mut consider = |at: Option<Instant>, e: Expiry| {
            if let Some(at) = at
                && at <= now
                && best.is_none_or(|(b, _)| at < b)
            {
                best = Some((at, e));
            }
        };
        consider(self.duration_deadline, Expiry::Duration);
        consider(self.request_deadline.filter(|_| !self.request_complete), Expiry::Request);
        consider(self.idle.map(|d| self.last + d), Expiry::Idle);
        consider(self.upstream_idle.as_ref().map(|(d, _)| self.last + *d), Expiry::UpstreamIdle);
        best.map(|b| b.1)
    }
}

/// The timers of one connection's streams.
#[derive(Default)]
pub struct StreamTimers {
    slots: RefCell<Vec<Slot>>,
    /// Woken when a stream's deadlines may have moved earlier (the connection re-arms its timer).
    pub changed: tokio::sync::Notify,
    /// The HTTP/1 codec's view of the request (the downstream bytes, read by the connection's
    /// guard): whether the current request's body is still arriving, and when bytes last came.
    pub h1: Option<std::sync::Arc<H1Progress>>,
    open: Cell<u32>,
    stats: TimerStats,
    /// Where the connection's timer is set (None: not set). A stream whose deadline is later
    /// does not wake the connection: the timer fires early, finds nothing due, and is moved.
    armed: Cell<Option<Instant>>,
}

/// What the HTTP/1 guard learns of the request being read (it runs where hyper reads, so it
/// is shared as atomics; one connection, one thread: relaxed).
pub struct H1Progress {
    base: std::time::Instant,
    /// Within a request body (or its trailers).
    in_body: std::sync::atomic::AtomicBool,
    /// When bytes last arrived, in nanoseconds from `base`.
    last_read: std::sync::atomic::AtomicU64,
}

impl Default for H1Progress {
    fn default() -> Self {
        H1Progress { base: std::time::Instant::now(), in_body: Default::default(), last_read: Default::default() }
    }
}

impl H1Progress {
    /// Bytes arrived; `in_body`: the request they belong to still has body to come.
    #[inline]
    pub fn read(&self, in_body: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.last_read.store(self.base.elapsed().as_nanos() as u64, Relaxed);
        self.in_body.store(in_body, Relaxed);
    }
}

/// The settings a stream opens with (the connection manager's).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamLimits {
    pub idle: Option<Duration>,
    pub request: Option<Duration>,
    pub duration: Option<Duration>,
}

impl StreamTimers {
    pub fn new(h1: Option<std::sync::Arc<H1Progress>>, stats: TimerStats) -> Self {
        StreamTimers { h1, stats, ..StreamTimers::default() }
    }

    /// Opens a stream's slot; `request_complete` when the request had no body.
    pub fn open(self: &Rc<Self>, lim: StreamLimits, request_complete: bool) -> StreamTimer {
        let now = Instant::now();
        let slot = Slot {
            refs: 1,
            start: now,
            last: now,
            idle: lim.idle,
            upstream_idle: None,
            request_deadline: lim.request.map(|d| now + d),
            duration_deadline: lim.duration.map(|d| now + d),
            request_complete,
            expired: None,
            waker: None,
            parked: None,
        };
        let mut slots = self.slots.borrow_mut();
        let idx = match slots.iter().position(|s| s.refs == 0) {
            Some(i) => {
                slots[i] = slot;
                i
            }
            None => {
                slots.push(slot);
                slots.len() - 1
            }
        };
        let next = slots[idx].next_deadline();
        drop(slots);
        self.open.set(self.open.get() + 1);
        self.moved(next);
        StreamTimer { timers: self.clone(), idx: idx as u32 }
    }

    /// Records where the connection set its timer.
    pub fn set_armed(&self, at: Option<Instant>) {
        self.armed.set(at);
    }

    /// A stream's deadline is now `next`: wakes the connection if its timer is set later.
    fn moved(&self, next: Option<Instant>) {
        if let Some(d) = next
            && self.armed.get().is_none_or(|a| d < a)
        {
            self.changed.notify_one();
        }
    }

    /// The earliest deadline of the connection's streams.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.open.get() == 0 {
            return None;
        }
        self.refresh_h1();
        self.slots.borrow().iter().filter_map(Slot::next_deadline).min()
    }

    /// Marks the streams whose deadline passed and wakes them.
    pub fn fire(&self, now: Instant) {
        self.refresh_h1();
        for s in self.slots.borrow_mut().iter_mut() {
            if let Some(e) = s.due(now) {
                s.expired = Some(e);
                let counter = match e {
                    Expiry::Idle => self.stats.idle.as_ref(),
                    Expiry::Request => self.stats.request.as_ref(),
                    Expiry::Duration => self.stats.duration.as_ref(),
                    Expiry::UpstreamIdle => s.upstream_idle.as_ref().map(|u| &u.1),
                };
                if let Some(c) = counter {
                    c.inc();
                }
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Folds in what the HTTP/1 guard saw: bytes of the body count as the stream's activity,
    /// and the body's end completes the request.
    fn refresh_h1(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(p) = &self.h1 else { return };
        let read_at = Instant::from_std(p.base + Duration::from_nanos(p.last_read.load(Relaxed)));
        let in_body = p.in_body.load(Relaxed);
        for s in self.slots.borrow_mut().iter_mut().filter(|s| s.refs > 0 && !s.request_complete) {
            s.last = s.last.max(read_at);
            if !in_body {
                s.request_complete = true;
            }
        }
    }
}

/// A stream's handle on its slot (counted: the connection manager and the response body hold
/// one each); the slot is free again when the last one is dropped.
pub struct StreamTimer {
    timers: Rc<StreamTimers>,
    idx: u32,
}

impl Clone for StreamTimer {
    fn clone(&self) -> Self {
        self.with(|s| s.refs += 1);
        StreamTimer { timers: self.timers.clone(), idx: self.idx }
    }
}

impl Drop for StreamTimer {
    fn drop(&mut self) {
        let freed = self.with(|s| {
            s.refs -= 1;
            if s.refs == 0 {
                s.waker = None;
                s.upstream_idle = None;
                s.parked = None;
                true
            } else {
                false
            }
        });
        if freed {
            self.timers.open.set(self.timers.open.get().saturating_sub(1));
        }
    }
}

impl StreamTimer {
    fn with<R>(&self, f: impl FnOnce(&mut Slot) -> R) -> R {
        let mut slots = self.timers.slots.borrow_mut();
        f(&mut slots[self.idx as usize])
    }

    /// Stream activity: the idle timers start over.
    #[inline]
    pub fn touch(&self) {
        self.with(|s| s.last = Instant::now());
    }

    /// Whether the request was received whole (the HTTP/1 guard's view folded in).
    pub fn request_complete(&self) -> bool {
        self.timers.refresh_h1();
        self.with(|s| s.request_complete)
    }

    /// Marks the request as received whole (`request_timeout` no longer applies).
    pub fn complete_request(&self) {
        self.with(|s| s.request_complete = true);
    }

    /// The route's `idle_timeout` replaces the connection manager's (zero: none), as Envoy's
    /// `refreshIdleTimeout`; the timer starts over.
    pub fn set_idle(&self, d: Duration) {
        let next = self.with(|s| {
            s.idle = (!d.is_zero()).then_some(d);
            s.last = Instant::now();
            s.next_deadline()
        });
        self.timers.moved(next);
    }

    /// The route's stream duration replaces the connection manager's (None: none), counted from
    /// the stream's start, as Envoy's `refreshDurationTimeout`.
    pub fn set_duration(&self, d: Option<Duration>) {
        let next = self.with(|s| {
            s.duration_deadline = d.map(|d| s.start + d);
            s.next_deadline()
        });
        self.timers.moved(next);
    }

    /// The router's `per_try_idle_timeout` while the response body streams.
    pub fn set_upstream_idle(&self, d: Duration, counter: Counter) {
        let next = self.with(|s| {
            s.upstream_idle = Some((d, counter));
            s.last = Instant::now();
            s.next_deadline()
        });
        self.timers.moved(next);
    }

    /// Keeps `v` with the stream (see `Slot::parked`).
    pub fn park(&self, v: Box<dyn std::any::Any>) {
        self.with(|s| s.parked = Some(v));
    }

    pub fn take_parked(&self) -> Option<Box<dyn std::any::Any>> {
        self.with(|s| s.parked.take())
    }

    /// Ready with the timer that ended the stream; else registers the task to be woken.
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<Expiry> {
        self.with(|s| match s.expired {
            Some(e) => Poll::Ready(e),
            None => {
                match &s.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => s.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        })
    }

    /// For the response body: the timer that passed (the stream is to be reset), else None.
    pub fn body_check(&self, cx: &mut Context<'_>) -> Option<Expiry> {
        match self.poll_expired(cx) {
            Poll::Ready(e) => Some(e),
            Poll::Pending => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn expired(t: &StreamTimer) -> Option<Expiry> {
        let mut cx = Context::from_waker(Waker::noop());
        match t.poll_expired(&mut cx) {
            Poll::Ready(e) => Some(e),
            Poll::Pending => None,
        }
    }

    fn timers() -> Rc<StreamTimers> {
        Rc::new(StreamTimers::new(
            None,
            TimerStats { idle: Some(Counter::detached()), request: Some(Counter::detached()), duration: None },
        ))
    }

    #[test]
    fn the_earliest_timer_ends_the_stream_and_is_counted() {
        let t = timers();
        let lim = StreamLimits { idle: Some(MS(300)), request: Some(MS(200)), duration: Some(MS(500)) };
        let s = t.open(lim, false);
        let start = t.slots.borrow()[0].start;
        assert_eq!(t.next_deadline(), Some(start + MS(200)));
        t.fire(start + MS(199));
        assert_eq!(expired(&s), None);
        t.fire(start + MS(250));
        assert_eq!(expired(&s), Some(Expiry::Request));
        assert_eq!(t.stats.request.as_ref().map(Counter::value), Some(1));
        // An expired stream no longer sets the connection's timer.
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_complete_request_and_route_overrides_change_the_deadlines() {
        let t = timers();
        let s = t.open(StreamLimits { idle: Some(MS(300)), request: Some(MS(200)), duration: None }, false);
        let start = t.slots.borrow()[0].start;
        s.complete_request();
        assert_eq!(t.next_deadline(), Some(start + MS(300)));
        // The route's idle timeout 0: none at all; its stream duration: from the stream's start.
        s.set_idle(Duration::ZERO);
        assert_eq!(t.next_deadline(), None);
        s.set_duration(Some(MS(700)));
        assert_eq!(t.next_deadline(), Some(start + MS(700)));
        s.set_duration(None);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn activity_moves_the_idle_deadline_and_slots_are_reused() {
        let t = timers();
        let s = t.open(StreamLimits { idle: Some(MS(300)), ..StreamLimits::default() }, true);
        let body = s.clone();
        drop(s);
        // The response body still holds the stream: its slot stays.
        let other = t.open(StreamLimits::default(), true);
        assert_eq!(other.idx, 1);
        body.with(|s| s.last += MS(1000));
        let last = body.with(|s| s.last);
        t.fire(last + MS(100));
        assert_eq!(expired(&body), None);
        t.fire(last + MS(300));
        assert_eq!(expired(&body), Some(Expiry::Idle));
        drop(body);
        drop(other);
        let again = t.open(StreamLimits::default(), true);
        assert_eq!(again.idx, 0);
        assert_eq!(expired(&again), None);
        assert_eq!(t.next_deadline(), None);
    }
}
