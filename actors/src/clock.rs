//! Injected time. Breakers, aggregator deadlines, supervisor backoff and executor batching read
//! and wait for time only through a [`Clock`], so tests drive them with a [`ManualClock`]
//! instead of sleeping.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

/// A sleep that an actor can spawn (`'static`, `Send`).
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Monotonic time since an arbitrary origin.
    fn now(&self) -> Duration;
    /// Resolves once `d` has passed on this clock (actor timers: deadlines, backoff).
    fn sleep(&self, d: Duration) -> Sleep;
    /// Blocks the calling OS thread until `d` has passed on this clock (executor threads).
    fn sleep_blocking(&self, d: Duration);
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl SystemClock {
    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock(Instant::now()))
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }

    fn sleep_blocking(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// A clock that moves only when told to: sleepers wake when [`ManualClock::advance`] passes
/// their time, never on their own.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
    /// Async sleepers: (wake-up time, their waker). Woken and removed by `advance`.
    timers: Mutex<Vec<(Duration, oneshot::Sender<()>)>>,
    /// Blocking sleepers wait on this.
    moved: Condvar,
    moved_lock: Mutex<()>,
}

impl ManualClock {
    pub fn shared() -> Arc<ManualClock> {
        Arc::new(ManualClock::default())
    }

    pub fn advance(&self, d: Duration) {
        // Time moves under the timers' lock, so that a sleep armed concurrently is either due
        // now or seen by the next advance.
        if let Ok(mut t) = self.timers.lock() {
            self.nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
            let now = self.now();
            let (due, rest): (Vec<_>, Vec<_>) = t.drain(..).partition(|(at, _)| *at <= now);
            *t = rest;
            for (_, w) in due {
                let _ = w.send(());
            }
        }
        let _g = self.moved_lock.lock();
        self.moved.notify_all();
    }

    /// Sleepers not yet woken and still waited for (a cancelled sleep does not count): tests
    /// wait for a timer to be armed before they advance the clock.
    pub fn pending_timers(&self) -> usize {
        self.timers
            .lock()
            .map(|t| t.iter().filter(|(_, w)| !w.is_closed()).count())
            .unwrap_or(0)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn sleep(&self, d: Duration) -> Sleep {
        if d.is_zero() {
            return Box::pin(async {});
        }
        let (tx, rx) = oneshot::channel();
        if let Ok(mut t) = self.timers.lock() {
            let at = self.now() + d;
            t.push((at, tx));
        }
        Box::pin(async move {
            // A dropped clock never wakes its sleepers: they wait forever, as time stood still.
            if rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }

    fn sleep_blocking(&self, d: Duration) {
        let at = self.now() + d;
        let Ok(mut g) = self.moved_lock.lock() else {
            return;
        };
        while self.now() < at {
            match self.moved.wait(g) {
                Ok(next) => g = next,
                Err(_) => return,
            }
        }
    }
}

/// Wall clock in Unix nanoseconds (timestamps on the wire).
pub fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_manual_sleep_wakes_only_when_the_clock_passes_its_time() {
        let c = ManualClock::shared();
        let mut s = c.sleep(Duration::from_millis(10));
        assert!(futures_poll(&mut s).is_none(), "time has not moved");
        c.advance(Duration::from_millis(9));
        assert!(futures_poll(&mut s).is_none());
        c.advance(Duration::from_millis(1));
        assert!(futures_poll(&mut s).is_some());
        assert_eq!(c.pending_timers(), 0);
    }

    fn futures_poll(s: &mut Sleep) -> Option<()> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match s.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(()) => Some(()),
            std::task::Poll::Pending => None,
        }
    }
}
