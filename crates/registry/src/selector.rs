//! Agent selection: an explicit name wins, otherwise the strategy ranks the
//! agents that have the required capabilities.
//!
//! Strategies (see [`Strategy`]):
//! * `least_loaded`: fewest running tasks.
//! * `round_robin`: the next agent by name after the last one picked.
//! * `p2c`: two distinct random candidates; the lower `(in_flight + 1) ×
//!   latency EWMA` wins (an agent with no latency yet takes the other one's,
//!   so in-flight count decides).
//! * `adaptive`: `10 × capabilities named in the task + priority −
//!   in_flight × inflight_penalty − recent selections ×
//!   recent_selection_penalty − recent failures × recent_failure_penalty`;
//!   the highest wins. Scores are signed, so busy agents still rank by how
//!   busy they are.
//!
//! Every strategy breaks ties by agent name.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;

use crate::load::AgentLoadSnapshot;
use crate::settings::{SelectorTuning, Strategy};

/// Points a capability named in the task is worth under `adaptive`: one
/// match offsets one running task at the default `inflight_penalty`.
pub const CAPABILITY_MATCH_POINTS: i64 = 10;

/// An agent the selector may pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCandidate {
    /// Its name.
    pub name: Arc<str>,
    /// Tags a task may require or mention ("rust", "web search").
    pub capabilities: Vec<String>,
    /// Added to its adaptive score.
    pub priority: i32,
}

impl AgentCandidate {
    /// A candidate with no capabilities and priority 0.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            capabilities: Vec::new(),
            priority: 0,
        }
    }

    /// Sets its capabilities.
    #[must_use]
    pub fn capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    /// Sets its priority.
    #[must_use]
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    fn has_capability(&self, wanted: &str) -> bool {
        self.capabilities
            .iter()
            .any(|capability| capability.trim().eq_ignore_ascii_case(wanted.trim()))
    }
}

/// What the caller asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectionRequest<'a> {
    /// An agent name, or `None`, `""` or `"auto"` to let the strategy pick.
    pub agent: Option<&'a str>,
    /// The task text; capabilities it names raise an agent's adaptive score.
    pub task: &'a str,
    /// Capabilities the agent must have, all of them.
    pub required_capabilities: &'a [String],
}

impl<'a> SelectionRequest<'a> {
    /// The agent the request names, trimmed; `None` when it leaves the pick
    /// to the strategy (no name, a blank one, or `auto` in any case).
    pub fn named(&self) -> Option<&'a str> {
        self.agent
            .map(str::trim)
            .filter(|name| !name.is_empty() && !name.eq_ignore_ascii_case("auto"))
    }
}

/// How the winner was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "strategy")]
pub enum SelectionMode {
    /// The request named it.
    Explicit,
    /// The strategy ranked it first.
    Strategy(Strategy),
}

/// The selector's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// The agent picked.
    pub agent: Arc<str>,
    /// How.
    pub mode: SelectionMode,
    /// Its adaptive score, under `adaptive`.
    pub score: Option<i64>,
    /// The eligible agents, best first.
    pub considered: Vec<Arc<str>>,
}

/// No agent could be picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectionError {
    /// There are no candidates at all.
    #[error("no agents are configured: add an [agents.<name>] section")]
    NoAgents,
    /// The requested agent is not among the candidates.
    #[error("unknown agent `{name}`: available agents are {available}")]
    UnknownAgent {
        /// The name asked for.
        name: String,
        /// The names that exist, comma-separated.
        available: String,
    },
    /// No candidate has every required capability.
    #[error("no agent has all of the capabilities [{required}]: available agents are {available}")]
    NoCapableAgent {
        /// The required capabilities, comma-separated.
        required: String,
        /// The candidates and their capabilities.
        available: String,
    },
}

/// Picks agents; keeps the round-robin cursor and the p2c random source.
#[derive(Debug)]
pub struct Selector {
    last_round_robin: Option<Arc<str>>,
    rng: fastrand::Rng,
}

impl Selector {
    /// A selector whose random choices follow `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            last_round_robin: None,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Picks an agent for `request` among `candidates`; `load` gives each
    /// candidate's current load.
    ///
    /// # Errors
    /// When there are no candidates, the named agent is unknown, or no agent
    /// has every required capability.
    pub fn select(
        &mut self,
        request: &SelectionRequest<'_>,
        candidates: &[AgentCandidate],
        tuning: &SelectorTuning,
        load: impl Fn(&str) -> AgentLoadSnapshot,
    ) -> Result<Selection, SelectionError> {
        if candidates.is_empty() {
            return Err(SelectionError::NoAgents);
        }
        if let Some(name) = request.named() {
            return match candidates.iter().find(|c| &*c.name == name) {
                Some(candidate) => Ok(Selection {
                    agent: candidate.name.clone(),
                    mode: SelectionMode::Explicit,
                    score: None,
                    considered: vec![candidate.name.clone()],
                }),
                None => Err(SelectionError::UnknownAgent {
                    name: name.to_owned(),
                    available: sorted_names(candidates.iter()),
                }),
            };
        }

        let mut eligible: Vec<Ranked<'_>> = candidates
            .iter()
            .filter(|c| {
                request
                    .required_capabilities
                    .iter()
                    .all(|wanted| c.has_capability(wanted))
            })
            .map(|candidate| Ranked {
                candidate,
                load: load(&candidate.name),
                score: 0,
            })
            .collect();
        if eligible.is_empty() {
            return Err(SelectionError::NoCapableAgent {
                required: request.required_capabilities.join(", "),
                available: candidates
                    .iter()
                    .map(|c| format!("{} [{}]", c.name, c.capabilities.join(", ")))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        eligible.sort_by(|a, b| a.candidate.name.cmp(&b.candidate.name));

        let mut score = None;
        match tuning.strategy {
            Strategy::LeastLoaded => {
                eligible.sort_by(|a, b| {
                    a.load
                        .in_flight
                        .cmp(&b.load.in_flight)
                        .then_with(|| a.candidate.name.cmp(&b.candidate.name))
                });
            }
            Strategy::RoundRobin => {
                let next = self
                    .last_round_robin
                    .as_ref()
                    .and_then(|last| eligible.iter().position(|r| r.candidate.name > *last))
                    .unwrap_or(0);
                eligible.rotate_left(next);
            }
            Strategy::P2c => {
                if eligible.len() > 1 {
                    let first = self.rng.usize(..eligible.len());
                    let mut second = self.rng.usize(..eligible.len() - 1);
                    if second >= first {
                        second += 1;
                    }
                    let (a, b) = (&eligible[first], &eligible[second]);
                    let winner = match p2c_cost(a, b).total_cmp(&p2c_cost(b, a)) {
                        Ordering::Less => first,
                        Ordering::Greater => second,
                        Ordering::Equal if a.candidate.name <= b.candidate.name => first,
                        Ordering::Equal => second,
                    };
                    let picked = eligible.remove(winner);
                    eligible.insert(0, picked);
                }
            }
            Strategy::Adaptive => {
                let task_words = words(request.task);
                for ranked in &mut eligible {
                    ranked.score = adaptive_score(ranked, &task_words, tuning);
                }
                eligible.sort_by(|a, b| {
                    b.score
                        .cmp(&a.score)
                        .then_with(|| a.candidate.name.cmp(&b.candidate.name))
                });
                score = Some(eligible[0].score);
            }
        }
        let agent = eligible[0].candidate.name.clone();
        if tuning.strategy == Strategy::RoundRobin {
            self.last_round_robin = Some(agent.clone());
        }
        Ok(Selection {
            agent,
            mode: SelectionMode::Strategy(tuning.strategy),
            score,
            considered: eligible.iter().map(|r| r.candidate.name.clone()).collect(),
        })
    }
}

struct Ranked<'a> {
    candidate: &'a AgentCandidate,
    load: AgentLoadSnapshot,
    score: i64,
}

/// Expected wait of `this`, using `other`'s latency when `this` has none yet.
fn p2c_cost(this: &Ranked<'_>, other: &Ranked<'_>) -> f64 {
    let latency = this
        .load
        .latency_ewma
        .or(other.load.latency_ewma)
        .map_or(1.0, |latency| latency.as_secs_f64());
    (this.load.in_flight as f64 + 1.0) * latency
}

fn adaptive_score(
    ranked: &Ranked<'_>,
    task_words: &HashSet<String>,
    tuning: &SelectorTuning,
) -> i64 {
    let matched = ranked
        .candidate
        .capabilities
        .iter()
        .filter(|capability| {
            let capability_words = words(capability);
            !capability_words.is_empty() && capability_words.is_subset(task_words)
        })
        .count();
    let load = &ranked.load;
    let in_flight = i64::try_from(load.in_flight).unwrap_or(i64::MAX);
    CAPABILITY_MATCH_POINTS
        .saturating_mul(i64::try_from(matched).unwrap_or(i64::MAX))
        .saturating_add(i64::from(ranked.candidate.priority))
        .saturating_sub(in_flight.saturating_mul(i64::from(tuning.inflight_penalty)))
        .saturating_sub(
            i64::from(load.recent_selections)
                .saturating_mul(i64::from(tuning.recent_selection_penalty)),
        )
        .saturating_sub(
            i64::from(load.recent_failures)
                .saturating_mul(i64::from(tuning.recent_failure_penalty)),
        )
}

/// Lowercase alphanumeric words of two or more characters.
fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.chars().count() >= 2)
        .map(str::to_lowercase)
        .collect()
}

fn sorted_names<'a>(candidates: impl Iterator<Item = &'a AgentCandidate>) -> String {
    let mut names: Vec<&str> = candidates.map(|c| &*c.name).collect();
    names.sort_unstable();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::settings::SubagentSettings;

    fn tuning(strategy: Strategy) -> SelectorTuning {
        SelectorTuning {
            strategy,
            ..*SubagentSettings::default().selector()
        }
    }

    fn agents() -> Vec<AgentCandidate> {
        vec![
            AgentCandidate::new("coder").capabilities(["rust", "code review"]),
            AgentCandidate::new("researcher").capabilities(["web", "research"]),
            AgentCandidate::new("writer").capabilities(["prose"]),
        ]
    }

    fn loads(entries: &[(&str, usize, u32, u32)]) -> HashMap<String, AgentLoadSnapshot> {
        entries
            .iter()
            .map(|&(name, in_flight, selections, failures)| {
                (
                    name.to_owned(),
                    AgentLoadSnapshot {
                        in_flight,
                        recent_selections: selections,
                        recent_failures: failures,
                        latency_ewma: None,
                    },
                )
            })
            .collect()
    }

    fn pick(
        selector: &mut Selector,
        strategy: Strategy,
        request: SelectionRequest<'_>,
        load: &HashMap<String, AgentLoadSnapshot>,
    ) -> Result<Selection, SelectionError> {
        selector.select(&request, &agents(), &tuning(strategy), |name| {
            load.get(name).copied().unwrap_or_default()
        })
    }

    #[test]
    fn an_explicit_name_wins_whatever_the_load() {
        let mut selector = Selector::with_seed(1);
        let load = loads(&[("writer", 50, 50, 50)]);
        let request = SelectionRequest {
            agent: Some("writer"),
            ..Default::default()
        };
        let selection = pick(&mut selector, Strategy::LeastLoaded, request, &load).unwrap();
        assert_eq!(&*selection.agent, "writer");
        assert_eq!(selection.mode, SelectionMode::Explicit);
    }

    #[test]
    fn auto_and_blank_names_mean_the_strategy_picks() {
        let mut selector = Selector::with_seed(1);
        for name in [Some("auto"), Some(" "), Some("AUTO"), None] {
            let request = SelectionRequest {
                agent: name,
                ..Default::default()
            };
            let selection = pick(
                &mut selector,
                Strategy::LeastLoaded,
                request,
                &HashMap::new(),
            )
            .unwrap();
            assert_eq!(
                selection.mode,
                SelectionMode::Strategy(Strategy::LeastLoaded)
            );
        }
    }

    #[test]
    fn named_is_the_trimmed_name_unless_it_means_auto() {
        let named = |agent| {
            SelectionRequest {
                agent,
                ..Default::default()
            }
            .named()
        };
        assert_eq!(named(Some(" writer ")), Some("writer"));
        assert_eq!(named(Some("Writer")), Some("Writer"));
        for agent in [
            None,
            Some(""),
            Some("  "),
            Some("auto"),
            Some(" AUTO "),
            Some("Auto"),
        ] {
            assert_eq!(named(agent), None, "{agent:?}");
        }
    }

    #[test]
    fn an_unknown_name_lists_the_available_agents() {
        let mut selector = Selector::with_seed(1);
        let request = SelectionRequest {
            agent: Some("poet"),
            ..Default::default()
        };
        let error = pick(&mut selector, Strategy::Adaptive, request, &HashMap::new()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown agent `poet`: available agents are coder, researcher, writer"
        );
    }

    #[test]
    fn required_capabilities_filter_candidates() {
        let mut selector = Selector::with_seed(1);
        let required = vec!["Research".to_owned()];
        let request = SelectionRequest {
            required_capabilities: &required,
            ..Default::default()
        };
        let load = loads(&[("researcher", 9, 0, 0)]);
        let selection = pick(&mut selector, Strategy::LeastLoaded, request, &load).unwrap();
        assert_eq!(&*selection.agent, "researcher");
        assert_eq!(selection.considered.len(), 1);

        let required = vec!["painting".to_owned()];
        let request = SelectionRequest {
            required_capabilities: &required,
            ..Default::default()
        };
        let error = pick(&mut selector, Strategy::LeastLoaded, request, &load).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("no agent has all of the capabilities [painting]")
        );
    }

    #[test]
    fn least_loaded_picks_fewest_in_flight_and_breaks_ties_by_name() {
        let mut selector = Selector::with_seed(1);
        let load = loads(&[
            ("coder", 2, 0, 0),
            ("researcher", 1, 0, 0),
            ("writer", 1, 0, 0),
        ]);
        let selection = pick(
            &mut selector,
            Strategy::LeastLoaded,
            SelectionRequest::default(),
            &load,
        )
        .unwrap();
        assert_eq!(&*selection.agent, "researcher");
        let names: Vec<&str> = selection.considered.iter().map(|n| &**n).collect();
        assert_eq!(names, ["researcher", "writer", "coder"]);
    }

    #[test]
    fn round_robin_cycles_by_name() {
        let mut selector = Selector::with_seed(1);
        let picked: Vec<String> = (0..4)
            .map(|_| {
                pick(
                    &mut selector,
                    Strategy::RoundRobin,
                    SelectionRequest::default(),
                    &HashMap::new(),
                )
                .unwrap()
                .agent
                .to_string()
            })
            .collect();
        assert_eq!(picked, ["coder", "researcher", "writer", "coder"]);
    }

    #[test]
    fn p2c_prefers_the_less_busy_of_two_and_is_seeded() {
        // With two candidates, both are always drawn, so the lower cost wins.
        let two = &agents()[..2];
        let mut selector = Selector::with_seed(7);
        let mut load = HashMap::new();
        load.insert(
            "coder",
            AgentLoadSnapshot {
                in_flight: 3,
                latency_ewma: Some(Duration::from_millis(100)),
                ..Default::default()
            },
        );
        load.insert(
            "researcher",
            AgentLoadSnapshot {
                in_flight: 1,
                latency_ewma: Some(Duration::from_millis(250)),
                ..Default::default()
            },
        );
        // coder: 4 × 0.1 = 0.4; researcher: 2 × 0.25 = 0.5.
        for _ in 0..10 {
            let selection = selector
                .select(
                    &SelectionRequest::default(),
                    two,
                    &tuning(Strategy::P2c),
                    |n| load.get(n).copied().unwrap_or_default(),
                )
                .unwrap();
            assert_eq!(&*selection.agent, "coder");
        }
        // The same seed makes the same choices among three.
        let run = |seed| {
            let mut selector = Selector::with_seed(seed);
            (0..20)
                .map(|_| {
                    pick(
                        &mut selector,
                        Strategy::P2c,
                        SelectionRequest::default(),
                        &HashMap::new(),
                    )
                    .unwrap()
                    .agent
                    .to_string()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }

    #[test]
    fn adaptive_weighs_capability_match_against_penalties() {
        let mut selector = Selector::with_seed(1);
        let request = SelectionRequest {
            task: "Do a Rust code review of this crate",
            ..Default::default()
        };
        // coder matches "rust" and "code review": 20 points.
        let selection = pick(&mut selector, Strategy::Adaptive, request, &HashMap::new()).unwrap();
        assert_eq!(&*selection.agent, "coder");
        assert_eq!(selection.score, Some(20));

        // Two running tasks and a recent failure outweigh the match:
        // 20 - 2*10 - 1*3 - 1*16 = -19 < 0 for the idle others.
        let load = loads(&[("coder", 2, 1, 1)]);
        let selection = pick(&mut selector, Strategy::Adaptive, request, &load).unwrap();
        assert_eq!(&*selection.agent, "researcher");
        assert_eq!(selection.score, Some(0));
        let names: Vec<&str> = selection.considered.iter().map(|n| &**n).collect();
        assert_eq!(names, ["researcher", "writer", "coder"]);
    }

    #[test]
    fn adaptive_scores_are_signed_so_busy_agents_still_rank_by_load() {
        let mut selector = Selector::with_seed(1);
        let load = loads(&[
            ("coder", 3, 0, 0),
            ("researcher", 2, 0, 0),
            ("writer", 4, 0, 0),
        ]);
        let selection = pick(
            &mut selector,
            Strategy::Adaptive,
            SelectionRequest::default(),
            &load,
        )
        .unwrap();
        assert_eq!(&*selection.agent, "researcher");
        assert_eq!(selection.score, Some(-20));
    }

    #[test]
    fn no_candidates_is_a_clear_error() {
        let mut selector = Selector::with_seed(1);
        let error = selector
            .select(
                &SelectionRequest::default(),
                &[],
                &tuning(Strategy::Adaptive),
                |_| AgentLoadSnapshot::default(),
            )
            .unwrap_err();
        assert_eq!(error, SelectionError::NoAgents);
    }
}
