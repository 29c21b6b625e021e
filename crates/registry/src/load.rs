//! Per-agent load: in-flight count, recent selections and failures, latency.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::time::Instant;

/// A source of "now" for the load tracker, so window tests need no sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// Tokio's clock (which follows paused test time).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.now.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock()
    }
}

/// What the selector knows about one agent's load.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AgentLoadSnapshot {
    /// Tasks of this agent that are running now (queued ones do not count).
    pub in_flight: usize,
    /// Times it was picked within the load window.
    pub recent_selections: u32,
    /// Failures that count against it within the load window.
    pub recent_failures: u32,
    /// Exponentially weighted mean run time of its successful tasks.
    pub latency_ewma: Option<Duration>,
}

/// How a run ended, as far as load balancing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// It finished with an answer after this long.
    Succeeded(Duration),
    /// It failed in a way that is the agent's fault (see
    /// [`FailureKind::counts_against_agent`](crate::FailureKind::counts_against_agent)).
    Failed,
    /// It ended in a way that says nothing about the agent (cancelled,
    /// denied by a hook).
    Neutral,
}

/// Weight of the newest sample in the latency EWMA, in tenths (0.3). Kept
/// in integers: the mean is updated under the load tracker's lock on every
/// successful task, and float conversions of a `Duration` cost several
/// times the integer arithmetic.
const LATENCY_EWMA_WEIGHT_TENTHS: u64 = 3;
/// Events are counted in this many buckets per window, which bounds memory
/// whatever the task rate.
const BUCKETS_PER_WINDOW: u32 = 64;

/// Counts events in a sliding window, in fixed-width buckets.
#[derive(Debug, Default)]
struct WindowCounter {
    buckets: VecDeque<(Instant, u32)>,
}

impl WindowCounter {
    fn record(&mut self, now: Instant, window: Duration) {
        self.prune(now, window);
        let width = (window / BUCKETS_PER_WINDOW).max(Duration::from_millis(1));
        match self.buckets.back_mut() {
            Some((start, count)) if now.saturating_duration_since(*start) < width => {
                *count = count.saturating_add(1);
            }
            _ => self.buckets.push_back((now, 1)),
        }
    }

    fn prune(&mut self, now: Instant, window: Duration) {
        while let Some((start, _)) = self.buckets.front() {
            if now.saturating_duration_since(*start) >= window {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    fn count(&self, now: Instant, window: Duration) -> u32 {
        self.buckets
            .iter()
            .filter(|(start, _)| now.saturating_duration_since(*start) < window)
            .fold(0_u32, |sum, (_, count)| sum.saturating_add(*count))
    }
}

#[derive(Debug, Default)]
struct AgentLoad {
    in_flight: usize,
    selections: WindowCounter,
    failures: WindowCounter,
    latency_ewma: Option<Duration>,
}

/// Records load per agent for the selector.
///
/// Not synchronized itself: the registry keeps it under its own lock, and a
/// standalone user wraps it as they see fit.
#[derive(Debug)]
pub struct LoadTracker {
    clock: Arc<dyn Clock>,
    agents: FxHashMap<Arc<str>, AgentLoad>,
}

impl Default for LoadTracker {
    fn default() -> Self {
        Self::new(Arc::new(TokioClock))
    }
}

impl LoadTracker {
    /// A tracker that reads time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            agents: FxHashMap::default(),
        }
    }

    fn update(&mut self, agent: &Arc<str>, update: impl FnOnce(&mut AgentLoad)) {
        // Looked up before inserting, so the common case clones no name: an
        // agent's name is shared by all its tasks, and each clone writes to
        // the count that every thread running them touches.
        match self.agents.get_mut(agent) {
            Some(load) => update(load),
            None => update(self.agents.entry(agent.clone()).or_default()),
        }
    }

    /// The selector picked `agent`.
    pub fn record_selection(&mut self, agent: &Arc<str>, window: Duration) {
        let now = self.clock.now();
        self.update(agent, |load| load.selections.record(now, window));
    }

    /// A task of `agent` started running.
    pub fn record_started(&mut self, agent: &Arc<str>) {
        self.update(agent, |load| {
            load.in_flight = load.in_flight.saturating_add(1)
        });
    }

    /// A running task of `agent` ended.
    pub fn record_finished(&mut self, agent: &Arc<str>, outcome: RunOutcome, window: Duration) {
        // Only a failure needs the time.
        let now = matches!(outcome, RunOutcome::Failed).then(|| self.clock.now());
        self.update(agent, |load| {
            load.in_flight = load.in_flight.saturating_sub(1);
            match (outcome, now) {
                (RunOutcome::Succeeded(took), _) => {
                    load.latency_ewma = Some(match load.latency_ewma {
                        None => took,
                        Some(mean) => ewma(mean, took),
                    });
                }
                (RunOutcome::Failed, Some(now)) => load.failures.record(now, window),
                _ => {}
            }
        });
    }

    /// Tasks of `agent` running now.
    pub fn in_flight(&self, agent: &str) -> usize {
        self.agents.get(agent).map_or(0, |load| load.in_flight)
    }

    /// Drops agents with nothing running and nothing recent, so names that
    /// come and go do not accumulate. Their latency average goes with them.
    pub fn forget_idle(&mut self, window: Duration) {
        let now = self.clock.now();
        self.agents.retain(|_, load| {
            load.selections.prune(now, window);
            load.failures.prune(now, window);
            load.in_flight > 0
                || !load.selections.buckets.is_empty()
                || !load.failures.buckets.is_empty()
        });
    }

    /// How many agents the tracker holds.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether the tracker holds no agent.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The load of `agent` as seen through a window of `window`.
    pub fn snapshot(&self, agent: &str, window: Duration) -> AgentLoadSnapshot {
        let now = self.clock.now();
        self.agents
            .get(agent)
            .map(|load| AgentLoadSnapshot {
                in_flight: load.in_flight,
                recent_selections: load.selections.count(now, window),
                recent_failures: load.failures.count(now, window),
                latency_ewma: load.latency_ewma,
            })
            .unwrap_or_default()
    }
}

/// The latency mean moved toward a new sample, in whole nanoseconds
/// (saturating past about 58 years, far beyond any run).
fn ewma(mean: Duration, sample: Duration) -> Duration {
    let nanos = |duration: Duration| u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let weighted = nanos(mean)
        .saturating_mul(10 - LATENCY_EWMA_WEIGHT_TENTHS)
        .saturating_add(nanos(sample).saturating_mul(LATENCY_EWMA_WEIGHT_TENTHS));
    Duration::from_nanos(weighted / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn a() -> Arc<str> {
        Arc::from("a")
    }

    fn tracker() -> (Arc<ManualClock>, LoadTracker) {
        let clock = Arc::new(ManualClock::new(Instant::now()));
        (clock.clone(), LoadTracker::new(clock))
    }

    #[test]
    fn in_flight_counts_running_tasks_only() {
        let (_clock, mut tracker) = tracker();
        tracker.record_selection(&a(), WINDOW);
        assert_eq!(tracker.snapshot("a", WINDOW).in_flight, 0);
        tracker.record_started(&a());
        tracker.record_started(&a());
        tracker.record_finished(&a(), RunOutcome::Neutral, WINDOW);
        let load = tracker.snapshot("a", WINDOW);
        assert_eq!(load.in_flight, 1);
        assert_eq!(tracker.in_flight("a"), 1);
        assert_eq!(tracker.in_flight("nobody"), 0);
        assert_eq!(load.recent_selections, 1);
        assert_eq!(load.recent_failures, 0);
    }

    #[test]
    fn selections_and_failures_leave_the_window() {
        let (clock, mut tracker) = tracker();
        tracker.record_selection(&a(), WINDOW);
        tracker.record_started(&a());
        tracker.record_finished(&a(), RunOutcome::Failed, WINDOW);
        clock.advance(Duration::from_secs(30));
        tracker.record_selection(&a(), WINDOW);
        let load = tracker.snapshot("a", WINDOW);
        assert_eq!((load.recent_selections, load.recent_failures), (2, 1));
        clock.advance(Duration::from_secs(31));
        let load = tracker.snapshot("a", WINDOW);
        assert_eq!((load.recent_selections, load.recent_failures), (1, 0));
        clock.advance(Duration::from_secs(30));
        assert_eq!(tracker.snapshot("a", WINDOW), AgentLoadSnapshot::default());
    }

    #[test]
    fn memory_is_bounded_by_buckets_not_events() {
        let (clock, mut tracker) = tracker();
        for _ in 0..100_000 {
            tracker.record_selection(&a(), WINDOW);
            clock.advance(Duration::from_millis(3));
        }
        let buckets = tracker.agents["a"].selections.buckets.len();
        assert!(buckets <= BUCKETS_PER_WINDOW as usize + 1, "{buckets}");
        let recent = tracker.snapshot("a", WINDOW).recent_selections;
        // 60 s of events at one per 3 ms, give or take one bucket.
        assert!((19_000..=20_001).contains(&recent), "{recent}");
    }

    #[test]
    fn latency_is_an_ewma_of_successes() {
        let (_clock, mut tracker) = tracker();
        tracker.record_started(&a());
        tracker.record_finished(
            &a(),
            RunOutcome::Succeeded(Duration::from_millis(100)),
            WINDOW,
        );
        assert_eq!(
            tracker.snapshot("a", WINDOW).latency_ewma,
            Some(Duration::from_millis(100))
        );
        tracker.record_started(&a());
        tracker.record_finished(
            &a(),
            RunOutcome::Succeeded(Duration::from_millis(200)),
            WINDOW,
        );
        let mean = tracker.snapshot("a", WINDOW).latency_ewma.unwrap();
        assert_eq!(mean.as_millis(), 130);
    }

    #[test]
    fn the_latency_mean_saturates_instead_of_overflowing() {
        let huge = Duration::from_secs(u64::MAX);
        let mean = ewma(huge, huge);
        // u64::MAX nanoseconds, a tenth of it: about 58 years.
        assert_eq!(mean, Duration::from_nanos(u64::MAX / 10));
        assert_eq!(
            ewma(Duration::from_millis(100), Duration::ZERO),
            Duration::from_millis(70)
        );
    }

    #[test]
    fn idle_agents_are_forgotten_after_the_window() {
        let (clock, mut tracker) = tracker();
        let busy: Arc<str> = Arc::from("busy");
        tracker.record_started(&busy);
        tracker.record_selection(&a(), WINDOW);
        tracker.forget_idle(WINDOW);
        assert_eq!(tracker.len(), 2);
        clock.advance(WINDOW);
        tracker.forget_idle(WINDOW);
        assert_eq!(tracker.len(), 1, "the running agent stays");
        tracker.record_finished(&busy, RunOutcome::Neutral, WINDOW);
        tracker.forget_idle(WINDOW);
        assert!(tracker.is_empty());
    }

    #[test]
    fn unknown_agents_have_no_load() {
        let (_clock, tracker) = tracker();
        assert_eq!(
            tracker.snapshot("nobody", WINDOW),
            AgentLoadSnapshot::default()
        );
    }
}
