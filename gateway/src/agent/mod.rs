//! Pi, the agent: answers conversations through any OpenAI-compatible model.
//!
//! A new message in a conversation whose mode is `draft` or `autopilot` queues a run in the
//! same transaction as the message (see [`crate::store`]). The scheduler here runs queued
//! runs oldest first, one at a time per conversation and up to `agent.max_concurrent_runs`
//! at once. A run checks the day's token budget, builds its prompt within the context
//! budget (folding old history into a rolling summary when it no longer fits), calls the
//! model with the tenant's allowed tools, streams the text to inbox subscribers, and writes
//! its outcome together with its reply. Stopping the gateway abandons runs in flight
//! without an outcome, so they run again at the next start: nobody gets a "please retry".
//! A run that three restarts in a row did not finish fails instead, in case it is what
//! takes the gateway down; restarts after a clean stop do not count.

mod context;
mod history;
mod model;
mod tools;

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use jiff::Timestamp;
use moltbot_protocol::ids::{MessageId, RunId};
use moltbot_protocol::inbox::{AgentDelta, RunState, ServerFrame};
use thiserror::Error;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use self::context::{ContextInput, Overflow};
use self::history::{CachedHistory, HistoryCache, Revision};
use self::model::{ChatMessage, ChatRequest, ModelClient, ModelError, StreamEvent, Turn, Usage};
use crate::bus::Bus;
use crate::channels::Connectors;
use crate::config::{AgentConfig, Config, ModelConfig};
use crate::metrics::{Metrics, ResultLabels, TokenLabels};
use crate::store::{
    HistoryRow, QueuedRun, RunFinish, RunOutcome, RunPolicy, RunStart, RunUsage, Store, StoreError,
    UsageDay,
};
use crate::tasks::{ConversationTasks, Lookout};

/// Messages read for a run's prompt before the context budget trims them.
const HISTORY_MESSAGES: u32 = 200;
/// Time between the scheduler's safety passes; the follow-up timer's longest sleep.
const IDLE: Duration = Duration::from_secs(30);
/// A run still working after this long shows the chat a typing indicator.
const TYPING_AFTER: Duration = Duration::from_millis(500);
/// Text of recent history kept between runs, across conversations.
const HISTORY_CACHE_BYTES: usize = 16 << 20;
/// A run started this many times after restarts without an outcome fails rather than
/// start again: if it is what takes the gateway down, it would otherwise do so forever.
const MAX_RESTARTS: u32 = 3;

/// What a new message queues, from the config.
pub fn run_policy(config: &AgentConfig) -> RunPolicy {
    RunPolicy {
        enabled: config.model.is_some(),
        default_mode: config.default_mode,
        require_mention_in_groups: config.require_mention_in_groups,
    }
}

#[derive(Debug, Error)]
enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Budget(String),
    /// A bug, not the model's or the store's doing: running the run again would only repeat
    /// it, and hold up its conversation, which gets one run at a time.
    #[error("Pi stopped on an internal error")]
    Panicked,
}

/// The model client, and the config it was built for (a reload may change it).
type CachedModel = (ModelConfig, Arc<ModelClient>);

/// The agent's shared parts.
#[derive(Clone)]
pub struct Agent {
    store: Store,
    bus: Bus,
    connectors: Connectors,
    metrics: Arc<Metrics>,
    config: watch::Receiver<Arc<Config>>,
    model: Arc<Mutex<Option<CachedModel>>>,
    history: Arc<HistoryCache>,
    follow_ups_changed: Arc<Notify>,
}

/// What a run starts from: the store's answer, and the history the prompt is built from.
struct Started {
    start: RunStart,
    history: Vec<HistoryRow>,
    /// When `history` was last read in full.
    loaded_at: Instant,
}

impl Agent {
    pub fn new(
        store: Store,
        bus: Bus,
        connectors: Connectors,
        metrics: Arc<Metrics>,
        config: watch::Receiver<Arc<Config>>,
    ) -> Self {
        Self {
            store,
            bus,
            connectors,
            metrics,
            config,
            model: Arc::new(Mutex::new(None)),
            history: Arc::new(HistoryCache::new(HISTORY_CACHE_BYTES)),
            follow_ups_changed: Arc::new(Notify::new()),
        }
    }

    /// Runs the scheduler and the follow-up timer until shutdown. Runs in flight are
    /// abandoned without an outcome and run again at the next start.
    pub async fn run(self, shutdown: CancellationToken) {
        let follow_ups = tokio::spawn(self.clone().follow_ups(shutdown.clone()));
        let max = self.config.borrow().agent.max_concurrent_runs;
        let mut tasks = ConversationTasks::default();
        let mut lookout = Lookout::default();
        // A read now and then whatever happens: it picks up a run a failing store left queued.
        let mut safety_pass = tokio::time::Instant::now() + IDLE;
        loop {
            for freed in tasks.reap() {
                lookout.finished(Some(freed));
            }
            let room = max.saturating_sub(tasks.len());
            if room > 0 && lookout.due() {
                match self.store.queued_runs(room, tasks.busy()).await {
                    Ok(runs) => {
                        lookout.read(runs.len(), room);
                        for run in runs {
                            let agent = self.clone();
                            tasks.spawn(run.conversation_id, async move {
                                agent.execute(run).await;
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read queued agent runs"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                news = self.store.runs_ready() => lookout.news(news, tasks.busy()),
                freed = tasks.next_finished() => lookout.finished(freed),
                _ = tokio::time::sleep_until(safety_pass) => {
                    lookout.timer();
                    safety_pass = tokio::time::Instant::now() + IDLE;
                }
            }
        }
        if tasks.len() > 0 {
            tracing::info!(
                runs = tasks.len(),
                "stopping agent runs in flight; they run again at the next start"
            );
        }
        tasks.shutdown().await;
        // A clean stop is not what the restart count is about.
        if let Err(e) = self.store.uncount_unfinished_restarts().await {
            tracing::warn!(error = %e, "cannot take back the restarts of unfinished agent runs");
        }
        let _ = follow_ups.await;
    }

    /// The cached client when it was built for `config`, else a new one. Built outside the
    /// lock, which only ever holds a whole value: a run that panicked while holding it (runs
    /// fail alone, see [`contain_panic`]) leaves nothing to distrust.
    fn model(&self, config: &ModelConfig) -> Result<Arc<ModelClient>, ModelError> {
        let cached = || self.model.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built_for, client)) = cached().as_ref()
            && same_model(built_for, config)
        {
            return Ok(client.clone());
        }
        let client = Arc::new(ModelClient::new(config)?);
        *cached() = Some((config.clone(), client.clone()));
        Ok(client)
    }

    async fn execute(&self, run: QueuedRun) {
        let began = Instant::now();
        let mut usage = RunUsage::default();
        let Some((answered, outcome)) = self.outcome(&run, &mut usage).await else {
            return;
        };
        let result = match &outcome {
            RunOutcome::Reply(_) => "replied",
            RunOutcome::Failed(_) => "failed",
            RunOutcome::BudgetExhausted { .. } => "budget_exhausted",
        };
        for (kind, tokens) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ] {
            self.metrics
                .agent_tokens
                .get_or_create(&TokenLabels { kind })
                .inc_by(tokens);
        }
        let finish = RunFinish {
            run_id: run.id,
            answered,
            outcome,
            usage,
        };
        match self.store.finish_run(finish).await {
            Ok(()) => {
                self.metrics
                    .agent_runs
                    .get_or_create(&ResultLabels { result })
                    .inc();
                self.metrics
                    .agent_run_duration
                    .observe(began.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "cannot record an agent run's outcome")
            }
        }
    }

    /// What a run answers and how it ended; None leaves it queued (or it is no longer).
    async fn outcome(
        &self,
        run: &QueuedRun,
        usage: &mut RunUsage,
    ) -> Option<(MessageId, RunOutcome)> {
        match self.restarted_too_often(run).await {
            Ok(false) => {}
            Ok(true) => {
                let error = format!(
                    "Pi gave up: the gateway restarted {MAX_RESTARTS} times in a row without finishing this"
                );
                tracing::warn!(run_id = %run.id, error, "agent run failed");
                return Some((run.trigger_message_id, RunOutcome::Failed(error)));
            }
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "cannot count a restarted agent run");
                return None;
            }
        }
        let config = self.config.borrow().clone();
        let day = UsageDay::of(Timestamp::now());
        let started = match self.read_start(run, day).await {
            Ok(Some(started)) => started,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "cannot read a queued run");
                return None;
            }
        };
        let answered = started.start.answered;
        self.announce_running(run).await;
        let answering = self.answer(run, started, day, &config, usage);
        match contain_panic(run.id, answering).await {
            Ok(outcome) => Some((answered, outcome)),
            Err(RunError::Store(e)) => {
                // The store is failing; leave the run queued for a later attempt.
                tracing::warn!(run_id = %run.id, error = %e, "agent run interrupted by the store");
                None
            }
            Err(e) => {
                tracing::warn!(run_id = %run.id, error = %e, "agent run failed");
                Some((answered, RunOutcome::Failed(e.to_string())))
            }
        }
    }

    /// Whether a run an earlier process left unfinished has now been restarted more than
    /// [`MAX_RESTARTS`] times. The store counts the first start of such a run in each
    /// process, durably, before the model is called, so a gateway that a run takes down
    /// gets past it after a few restarts.
    async fn restarted_too_often(&self, run: &QueuedRun) -> Result<bool, StoreError> {
        let restarts = self.store.count_restart(run.id).await?;
        Ok(restarts.is_some_and(|n| n > MAX_RESTARTS))
    }

    /// Reads what a run starts from. The conversation's history comes from the cache plus
    /// the messages since, or in full when the cache has no copy it can trust.
    async fn read_start(
        &self,
        run: &QueuedRun,
        day: UsageDay,
    ) -> Result<Option<Started>, StoreError> {
        let cached = self.history.take(run.conversation_id);
        let after = cached.as_ref().and_then(CachedHistory::read_after);
        let read = |after| self.store.run_start(run.id, day, HISTORY_MESSAGES, after);
        let Some(mut start) = read(after).await? else {
            return Ok(None);
        };
        if let Some(copy) = cached.filter(|_| after.is_some()) {
            let loaded_at = copy.loaded_at();
            let newer = std::mem::take(&mut start.context.history);
            if let Some(history) = copy.extend(revision(&start), newer, HISTORY_MESSAGES as usize) {
                return Ok(Some(Started {
                    start,
                    history,
                    loaded_at,
                }));
            }
            let Some(full) = read(None).await? else {
                return Ok(None);
            };
            start = full;
        }
        let history = std::mem::take(&mut start.context.history);
        Ok(Some(Started {
            start,
            history,
            loaded_at: Instant::now(),
        }))
    }

    /// Tells inbox subscribers the run started.
    async fn announce_running(&self, run: &QueuedRun) {
        if !self.bus.has_subscribers() {
            return;
        }
        if let Ok(mut view) = self.store.run(run.id).await {
            view.state = RunState::Running;
            self.bus
                .publish(Some(run.conversation_id), ServerFrame::AgentRun(view));
        }
    }

    async fn answer(
        &self,
        run: &QueuedRun,
        started: Started,
        day: UsageDay,
        config: &Config,
        usage: &mut RunUsage,
    ) -> Result<RunOutcome, RunError> {
        let Started {
            start,
            mut history,
            loaded_at,
        } = started;
        let mut at = revision(&start);
        let agent = &config.agent;
        let Some(model_config) = &agent.model else {
            return Ok(RunOutcome::Failed(
                "no model is configured (agent.model)".into(),
            ));
        };
        let spent = start.tokens_today;
        if spent >= agent.tokens_per_day {
            return Ok(RunOutcome::BudgetExhausted {
                reply: agent.budget_exhausted_reply.clone(),
                day: day.label(),
                tokens_used: spent,
                tokens_per_day: agent.tokens_per_day,
            });
        }
        let model = self.model(model_config)?;
        usage.model = Some(model.model().to_string());
        let mut context = start.context;
        // Dropped with this call: a reply that comes quickly needs no typing indicator.
        let _typing = self
            .connectors
            .get(&context.connection)
            .filter(|connector| connector.typing().is_some())
            .map(|connector| {
                let connector = connector.clone();
                let chat = context.chat.clone();
                AbortOnDropHandle::new(tokio::spawn(async move {
                    tokio::time::sleep(TYPING_AFTER).await;
                    if let Some(typing) = connector.typing() {
                        let _ = typing.typing(&chat).await;
                    }
                }))
            });
        let mut summary = context.summary.take().map(|(text, _)| text);
        let input = |summary: Option<&str>, history: &[HistoryRow]| {
            context::build(&ContextInput {
                system_prompt: &agent.system_prompt,
                facts: &context.facts,
                summary,
                history,
                budget_tokens: agent.context_tokens,
                reply_tokens: agent.max_reply_tokens,
                now: Timestamp::now(),
                conversation_title: context.conversation_title.as_deref(),
            })
        };
        let mut built = input(summary.as_deref(), &history);
        if let Some(Overflow { up_to, .. }) = built.overflow {
            let (older, newer): (Vec<_>, Vec<_>) = history.into_iter().partition(|h| h.id <= up_to);
            let request =
                context::summary_request(summary.as_deref(), &older, agent.max_reply_tokens);
            let turn = self.turn(&model, &request, agent, usage, None).await?;
            // No text means tool calls, though none were offered: folding on an empty
            // summary would drop the older messages from every later prompt.
            let text = turn.text.ok_or_else(|| {
                ModelError::Invalid("the model answered the summary request with tool calls".into())
            })?;
            self.store
                .save_summary(run.conversation_id, text.clone(), up_to)
                .await?;
            summary = Some(text);
            at.summary_up_to = Some(up_to);
            history = newer;
            built = input(summary.as_deref(), &history);
        }
        self.history
            .put(run.conversation_id, at, loaded_at, history);
        let toolbox = tools::Toolbox {
            store: &self.store,
            run_id: run.id,
            conversation_id: run.conversation_id,
            allowed: &agent.tools,
            follow_ups_changed: &self.follow_ups_changed,
        };
        let specs = toolbox.specs();
        let mut request = ChatRequest {
            messages: built.messages,
            tools: Vec::new(),
            max_tokens: agent.max_reply_tokens,
        };
        for round in 0..=agent.max_tool_rounds {
            let last_round = round == agent.max_tool_rounds;
            // On the last round the model must answer in words.
            request.tools = if last_round {
                Vec::new()
            } else {
                specs.clone()
            };
            let turn = self.turn(&model, &request, agent, usage, Some(run)).await?;
            if turn.tool_calls.is_empty() || last_round {
                // Models often end with a newline (Gemma does); channels show none, and the
                // inbox should keep what the person will see.
                let text = turn.text.as_deref().map(str::trim);
                return match text.filter(|t| !t.is_empty()) {
                    Some(text) => Ok(RunOutcome::Reply(text.to_owned())),
                    None => {
                        Err(ModelError::Invalid("the model answered with no text".into()).into())
                    }
                };
            }
            request.messages.push(ChatMessage::Assistant {
                text: turn.text.clone().map(Arc::from),
                tool_calls: turn.tool_calls.clone(),
            });
            for call in &turn.tool_calls {
                let content = toolbox.call(&call.name, &call.arguments).await?;
                request.messages.push(ChatMessage::Tool {
                    call_id: call.id.clone(),
                    content,
                });
            }
        }
        // Only reached with `max_tool_rounds` rounds that all called tools.
        Err(ModelError::Invalid("the model kept calling tools".into()).into())
    }

    /// One model call within the run's token budget; streams text to subscribers when the
    /// run is given.
    async fn turn(
        &self,
        model: &ModelClient,
        request: &ChatRequest,
        agent: &AgentConfig,
        usage: &mut RunUsage,
        streaming: Option<&QueuedRun>,
    ) -> Result<Turn, RunError> {
        let spent = usage.prompt_tokens + usage.completion_tokens;
        let prompt: u64 = request
            .messages
            .iter()
            .map(|m| u64::from(context::estimate_message_tokens(m)))
            .sum();
        let remaining = agent.tokens_per_run.saturating_sub(spent + prompt);
        if remaining < 16 {
            return Err(RunError::Budget(format!(
                "this run would exceed its budget of {} tokens",
                agent.tokens_per_run
            )));
        }
        let bus = &self.bus;
        let mut on_event = |event: StreamEvent<'_>| {
            let Some(run) = streaming else {
                return;
            };
            let text = match event {
                StreamEvent::Text(text) => text.to_string(),
                // Subscribers drop what they have when an empty delta follows a restart.
                StreamEvent::Restart => String::new(),
            };
            if bus.has_subscribers() {
                bus.publish(
                    Some(run.conversation_id),
                    ServerFrame::AgentDelta(AgentDelta {
                        run_id: run.id,
                        conversation_id: run.conversation_id,
                        text,
                    }),
                );
            }
        };
        let max_tokens = u32::try_from(remaining).unwrap_or(u32::MAX);
        let mut spent = Usage::default();
        let result = model
            .complete(request, max_tokens, &mut spent, &mut on_event)
            .await;
        // A failed turn is paid for too.
        add_usage(usage, spent, model);
        let turn = result?;
        Ok(turn)
    }

    /// Fires due follow-ups: a nudge into the conversation that asked for it.
    async fn follow_ups(self, shutdown: CancellationToken) {
        loop {
            match self.store.due_follow_ups(Timestamp::now()).await {
                Ok(due) => {
                    for follow_up in due {
                        let text = format!("Reminder: {}", follow_up.note);
                        if let Err(e) = self.store.fire_follow_up(follow_up.id, text).await {
                            tracing::warn!(follow_up = %follow_up.id, error = %e, "cannot fire a follow-up");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read due follow-ups"),
            }
            let sleep = match self.store.next_follow_up().await {
                Ok(Some(at)) => {
                    let wait = at.as_millisecond() - Timestamp::now().as_millisecond();
                    Duration::from_millis(u64::try_from(wait).unwrap_or(0)).min(IDLE)
                }
                _ => IDLE,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.follow_ups_changed.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }
}

/// Turns a panic while answering into a failed run, logged with its message.
async fn contain_panic<T>(
    run_id: RunId,
    answering: impl Future<Output = Result<T, RunError>>,
) -> Result<T, RunError> {
    AssertUnwindSafe(answering)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = (panic.downcast_ref::<&str>().copied())
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            tracing::error!(%run_id, panic = message, "an agent run panicked; it fails");
            Err(RunError::Panicked)
        })
}

fn revision(start: &RunStart) -> Revision {
    Revision {
        rev: start.context.history_rev,
        summary_up_to: start.context.summary.as_ref().map(|(_, up_to)| *up_to),
        answered: start.answered,
    }
}

fn add_usage(usage: &mut RunUsage, turn: Usage, model: &ModelClient) {
    usage.prompt_tokens += turn.prompt_tokens;
    usage.completion_tokens += turn.completion_tokens;
    usage.cost_micros += model.cost_micros(turn);
}

fn same_model(a: &ModelConfig, b: &ModelConfig) -> bool {
    a.base_url == b.base_url
        && a.model == b.model
        && a.api_key == b.api_key
        && a.timeout == b.timeout
        && a.max_retries == b.max_retries
        && a.prompt_price_per_million == b.prompt_price_per_million
        && a.completion_price_per_million == b.completion_price_per_million
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_run_fails_and_other_answers_pass_through() {
        let run = RunId(ulid::Ulid::new());
        let panicked = contain_panic::<RunOutcome>(run, async { panic!("a bug in a run") }).await;
        assert!(matches!(panicked, Err(RunError::Panicked)), "{panicked:?}");
        assert_eq!(
            RunError::Panicked.to_string(),
            "Pi stopped on an internal error"
        );
        let replied = contain_panic(run, async { Ok(RunOutcome::Reply("hi".into())) }).await;
        assert!(matches!(replied, Ok(RunOutcome::Reply(text)) if text == "hi"));
        let budget =
            contain_panic::<RunOutcome>(run, async { Err(RunError::Budget("over".into())) }).await;
        assert!(matches!(budget, Err(RunError::Budget(text)) if text == "over"));
    }
}
