//! The agent's rows: runs (one answer owed to a conversation), tool-call audit, memory
//! facts, rolling summaries and follow-ups.
//!
//! A run is queued in the same transaction as the message that asks for it, and its
//! outcome is written in the same transaction as its reply, so a crash between the two runs
//! it again and never answers twice.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};

use jiff::Timestamp;
use moltbot_protocol::event::{AgentBudgetExhausted, ConversationKind, EventBody, Source};
use moltbot_protocol::ids::{ConversationId, FactId, FollowUpId, MessageId, RunId};
use moltbot_protocol::inbox::{
    AgentMode, AgentRunView, FactState, FollowUpState, FollowUpView, MemoryFactView, Page, RunState,
};
use moltbot_protocol::{Channel, Event};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};
use sqlx::{FromRow, QueryBuilder, Sqlite, SqliteConnection};

use super::id_list;
use super::inbox::{NewOutbound, insert_outbound};
use super::publish::Change;
use super::write::Ctx;
use super::{Store, StoreError, Write, Written, from_ms, ms, parse_id};

/// Whether a new message queues a run; from the config, reloadable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPolicy {
    /// False without a model: nothing is queued.
    pub enabled: bool,
    pub default_mode: AgentMode,
    pub require_mention_in_groups: bool,
}

/// Queues a run for a message just stored, when the conversation's mode and the policy
/// want one. A run still waiting in the conversation takes the newer message instead, so a
/// burst of messages gets one answer.
pub(super) fn on_message_received(
    cx: &mut Ctx<'_>,
    conversation_id: ConversationId,
    message_id: MessageId,
    mode: Option<AgentMode>,
    kind: ConversationKind,
    mentions_self: bool,
) -> Result<(), StoreError> {
    let policy = cx.policy;
    let mode = mode.unwrap_or(policy.default_mode);
    let addressed =
        kind == ConversationKind::Dm || !policy.require_mention_in_groups || mentions_self;
    if !policy.enabled || mode == AgentMode::Off || !addressed {
        return Ok(());
    }
    queue_run(cx, conversation_id, message_id, mode)
}

fn queue_run(
    cx: &mut Ctx<'_>,
    conversation_id: ConversationId,
    trigger: MessageId,
    mode: AgentMode,
) -> Result<(), StoreError> {
    let id = RunId(cx.new_id());
    let run_id: String = cx
        .conn
        .prepare_cached(
            "INSERT INTO agent_runs (id, conversation_id, trigger_message_id, mode, state, created_at)
             VALUES (?, ?, ?, ?, 'queued', ?)
             ON CONFLICT (conversation_id) WHERE state = 'queued'
             DO UPDATE SET trigger_message_id = excluded.trigger_message_id, mode = excluded.mode
             RETURNING id",
        )?
        .query_row(
            params![
                id.to_string(),
                conversation_id.to_string(),
                trigger.to_string(),
                mode.as_str(),
                cx.now
            ],
            |r| r.get(0),
        )?;
    cx.changed(Change::RunUpdated(parse_id(&run_id)?));
    cx.wake.agent.push(conversation_id);
    Ok(())
}

/// Tokens and cost a run spent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunUsage {
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: u64,
}

/// A UTC day, the period of the daily token budget and of usage rollups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageDay(i64);

impl UsageDay {
    const MS: i64 = 86_400_000;

    pub fn of(at: Timestamp) -> Self {
        Self::of_ms(ms(at))
    }

    fn of_ms(at_ms: i64) -> Self {
        Self(at_ms.div_euclid(Self::MS))
    }

    /// `YYYY-MM-DD`.
    pub fn label(self) -> String {
        Timestamp::from_millisecond(self.0 * Self::MS)
            .map(|start| start.strftime("%Y-%m-%d").to_string())
            .unwrap_or_else(|_| format!("day {}", self.0))
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub enum RunOutcome {
    /// Sent at once (autopilot) or kept as a draft, by the run's mode.
    Reply(String),
    Failed(String),
    /// The daily budget is spent: the reply is sent once per conversation and day.
    BudgetExhausted {
        reply: String,
        day: String,
        tokens_used: u64,
        tokens_per_day: u64,
    },
}

#[derive(Clone, Debug)]
pub struct RunFinish {
    pub run_id: RunId,
    /// The trigger the run answered; a newer one that joined meanwhile gets a run of its own.
    pub answered: MessageId,
    pub outcome: RunOutcome,
    pub usage: RunUsage,
}

/// One audited tool call, with its effect when it writes.
#[derive(Clone, Debug)]
pub struct ToolCallRecord {
    pub run_id: RunId,
    pub conversation_id: ConversationId,
    pub tool: &'static str,
    pub write: bool,
    pub arguments: String,
    pub outcome: ToolOutcome,
    pub effect: Option<ToolEffect>,
}

#[derive(Clone, Debug)]
pub enum ToolOutcome {
    Ok(String),
    Error(String),
    /// Not on the tenant's allowlist.
    Refused,
}

#[derive(Clone, Debug)]
pub enum ToolEffect {
    ProposeFact(String),
    FollowUp { due_at: Timestamp, note: String },
}

#[derive(Debug)]
pub(crate) enum AgentWrite {
    SetMode {
        conversation_id: ConversationId,
        mode: Option<AgentMode>,
    },
    Finish(RunFinish),
    Approve {
        run_id: RunId,
        text: Option<String>,
    },
    Reject {
        run_id: RunId,
    },
    ToolCall(ToolCallRecord),
    SaveSummary {
        conversation_id: ConversationId,
        summary: String,
        up_to: MessageId,
    },
    AddFact {
        text: String,
    },
    ApproveFact {
        id: FactId,
    },
    DeleteFact {
        id: FactId,
    },
    FireFollowUp {
        id: FollowUpId,
        text: String,
    },
    CancelFollowUp {
        id: FollowUpId,
    },
    /// A queued run starts again after the gateway stopped during an earlier start.
    CountRestart {
        run_id: RunId,
    },
    /// The gateway stops cleanly with these runs' counted restarts unfinished.
    UncountRestarts {
        run_ids: Vec<RunId>,
    },
}

pub(super) fn apply(cx: &mut Ctx<'_>, write: &AgentWrite) -> Result<Written, StoreError> {
    match write {
        AgentWrite::SetMode {
            conversation_id,
            mode,
        } => {
            let updated = cx.execute(
                "UPDATE conversations SET agent_mode = ?, updated_at = ? WHERE id = ?",
                params![
                    mode.map(AgentMode::as_str),
                    cx.now,
                    conversation_id.to_string()
                ],
            )?;
            if updated == 0 {
                return Err(StoreError::NotFound("conversation"));
            }
            cx.changed(Change::ConversationUpdated(*conversation_id));
            Ok(Written::Done)
        }
        AgentWrite::Finish(finish) => finish_run(cx, finish),
        AgentWrite::Approve { run_id, text } => approve(cx, *run_id, text.as_deref()),
        AgentWrite::Reject { run_id } => {
            awaiting_draft(cx, *run_id)?;
            cx.execute(
                "UPDATE agent_runs SET state = 'rejected' WHERE id = ?",
                [run_id.to_string()],
            )?;
            cx.changed(Change::RunUpdated(*run_id));
            Ok(Written::Done)
        }
        AgentWrite::ToolCall(record) => tool_call(cx, record),
        AgentWrite::SaveSummary {
            conversation_id,
            summary,
            up_to,
        } => {
            // A summary only moves forward: two runs must not replace a longer one.
            cx.execute(
                "INSERT INTO conversation_summaries (conversation_id, summary, up_to, updated_at)
                 VALUES (?, ?, ?, ?)
                 ON CONFLICT (conversation_id) DO UPDATE SET summary = excluded.summary,
                    up_to = excluded.up_to, updated_at = excluded.updated_at
                 WHERE excluded.up_to > conversation_summaries.up_to",
                params![
                    conversation_id.to_string(),
                    summary,
                    up_to.to_string(),
                    cx.now
                ],
            )?;
            Ok(Written::Done)
        }
        AgentWrite::AddFact { text } => {
            let id = FactId(cx.new_id());
            cx.execute(
                "INSERT INTO memory_facts (id, text, state, created_at, approved_at) VALUES (?, ?, 'approved', ?, ?)",
                params![id.to_string(), text, cx.now, cx.now],
            )?;
            Ok(Written::Fact(id))
        }
        AgentWrite::ApproveFact { id } => {
            let updated = cx.execute(
                "UPDATE memory_facts SET state = 'approved', approved_at = coalesce(approved_at, ?) WHERE id = ?",
                params![cx.now, id.to_string()],
            )?;
            found(updated, "memory fact")?;
            Ok(Written::Fact(*id))
        }
        AgentWrite::DeleteFact { id } => {
            let deleted = cx.execute("DELETE FROM memory_facts WHERE id = ?", [id.to_string()])?;
            found(deleted, "memory fact")?;
            Ok(Written::Done)
        }
        AgentWrite::FireFollowUp { id, text } => fire_follow_up(cx, *id, text),
        AgentWrite::CancelFollowUp { id } => {
            let updated = cx.execute(
                "UPDATE follow_ups SET state = 'cancelled' WHERE id = ? AND state = 'pending'",
                [id.to_string()],
            )?;
            found(updated, "pending follow-up")?;
            Ok(Written::Done)
        }
        AgentWrite::CountRestart { run_id } => {
            let restarts = cx.query_optional(
                "UPDATE agent_runs SET attempts = attempts + 1 WHERE id = ? AND state = 'queued'
                 RETURNING attempts",
                [run_id.to_string()],
                |r| r.get::<_, i64>(0),
            )?;
            Ok(Written::Restarts(
                restarts.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            ))
        }
        AgentWrite::UncountRestarts { run_ids } => {
            for run_id in run_ids {
                cx.execute(
                    "UPDATE agent_runs SET attempts = max(attempts - 1, 0)
                     WHERE id = ? AND state = 'queued'",
                    [run_id.to_string()],
                )?;
            }
            Ok(Written::Done)
        }
    }
}

fn found(rows: usize, what: &'static str) -> Result<(), StoreError> {
    if rows == 0 {
        return Err(StoreError::NotFound(what));
    }
    Ok(())
}

/// What the writer needs to know of a run to finish it or decide its draft.
struct RunTarget {
    conversation_id: ConversationId,
    state: String,
    mode: String,
    trigger: MessageId,
    /// The trigger's provider id when the reply should quote it (groups only: in a direct
    /// chat a quote is only noise).
    reply_to: Option<String>,
    reply_text: Option<String>,
}

fn run_target(cx: &Ctx<'_>, run_id: RunId) -> Result<RunTarget, StoreError> {
    let row = cx
        .query_optional(
            "SELECT r.conversation_id, r.state, r.mode, r.trigger_message_id, m.provider_message_id, c.kind,
                    r.reply_text
             FROM agent_runs r JOIN messages m ON m.id = r.trigger_message_id
             JOIN conversations c ON c.id = r.conversation_id WHERE r.id = ?",
            [run_id.to_string()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            },
        )?
        .ok_or(StoreError::NotFound("agent run"))?;
    let (conversation_id, state, mode, trigger, provider_id, kind, reply_text) = row;
    Ok(RunTarget {
        conversation_id: parse_id(&conversation_id)?,
        state,
        mode,
        trigger: parse_id(&trigger)?,
        reply_to: (kind != ConversationKind::Dm.as_str())
            .then_some(provider_id)
            .flatten(),
        reply_text,
    })
}

fn finish_run(cx: &mut Ctx<'_>, finish: &RunFinish) -> Result<Written, StoreError> {
    let run_id = finish.run_id;
    let RunTarget {
        conversation_id,
        state,
        mode,
        trigger: current_trigger,
        reply_to,
        ..
    } = run_target(cx, run_id)?;
    if state != "queued" {
        return Err(StoreError::Conflict(format!(
            "run {run_id} already finished ({state})"
        )));
    }
    let usage = &finish.usage;
    let (state, reply_text, reply_message_id, error) = match &finish.outcome {
        RunOutcome::Reply(text) if mode == AgentMode::Autopilot.as_str() => {
            let (message_id, _) = insert_outbound(
                cx,
                NewOutbound {
                    conversation_id,
                    text,
                    dedupe_key: format!("a1:{run_id}"),
                    txn_id: None,
                    reply_to,
                },
            )?;
            ("succeeded", Some(text.clone()), Some(message_id), None)
        }
        RunOutcome::Reply(text) => ("awaiting_approval", Some(text.clone()), None, None),
        RunOutcome::Failed(error) => ("failed", None, None, Some(error.clone())),
        RunOutcome::BudgetExhausted {
            reply,
            day,
            tokens_used,
            tokens_per_day,
        } => {
            let announced = announce_budget_exhausted(
                cx,
                conversation_id,
                AgentBudgetExhausted {
                    conversation_id,
                    day: day.clone(),
                    tokens_used: *tokens_used,
                    tokens_per_day: *tokens_per_day,
                },
            )?;
            let message_id = if announced {
                let (id, _) = insert_outbound(
                    cx,
                    NewOutbound {
                        conversation_id,
                        text: reply,
                        dedupe_key: format!("b1:{conversation_id}:{day}"),
                        txn_id: None,
                        reply_to,
                    },
                )?;
                Some(id)
            } else {
                None
            };
            (
                "budget_exhausted",
                announced.then(|| reply.clone()),
                message_id,
                None,
            )
        }
    };
    cx.execute(
        "UPDATE agent_runs SET state = ?, trigger_message_id = ?, reply_text = ?, reply_message_id = ?, error = ?,
            model = ?, prompt_tokens = prompt_tokens + ?, completion_tokens = completion_tokens + ?,
            cost_micros = cost_micros + ?, finished_at = ?
         WHERE id = ?",
        params![
            state,
            finish.answered.to_string(),
            reply_text,
            reply_message_id.map(|id| id.to_string()),
            error,
            usage.model,
            usage.prompt_tokens as i64,
            usage.completion_tokens as i64,
            usage.cost_micros as i64,
            cx.now,
            run_id.to_string(),
        ],
    )?;
    cx.execute(
        "INSERT INTO agent_usage_daily (day, runs, prompt_tokens, completion_tokens, cost_micros)
         VALUES (?1, 1, ?2, ?3, ?4)
         ON CONFLICT (day) DO UPDATE SET runs = runs + 1, prompt_tokens = prompt_tokens + ?2,
             completion_tokens = completion_tokens + ?3, cost_micros = cost_micros + ?4",
        params![
            UsageDay::of_ms(cx.now).0,
            usage.prompt_tokens as i64,
            usage.completion_tokens as i64,
            usage.cost_micros as i64,
        ],
    )?;
    cx.changed(Change::RunUpdated(run_id));
    if current_trigger != finish.answered {
        // Messages arrived while the run was working: they are owed an answer of their own.
        let mode = mode
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
        queue_run(cx, conversation_id, current_trigger, mode)?;
    }
    Ok(Written::Done)
}

/// Logs `agent.budget_exhausted` once per conversation and day; true the first time.
fn announce_budget_exhausted(
    cx: &mut Ctx<'_>,
    conversation_id: ConversationId,
    body: AgentBudgetExhausted,
) -> Result<bool, StoreError> {
    let (connection, channel): (String, String) = cx
        .conn
        .prepare_cached("SELECT connection, channel FROM conversations WHERE id = ?")?
        .query_row([conversation_id.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let source = Source {
        channel: channel
            .parse::<Channel>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        connection,
    };
    let event = Event {
        id: moltbot_protocol::EventId(cx.new_id()),
        occurred_at: Timestamp::from_millisecond(cx.now).unwrap_or_else(|_| Timestamp::now()),
        source,
        body: EventBody::AgentBudgetExhausted(body),
    };
    super::inbox::log_event(cx, &event, &event.dedupe_key())
}

/// A draft waiting for approval: its conversation, trigger and quoted reply target.
fn awaiting_draft(
    cx: &Ctx<'_>,
    run_id: RunId,
) -> Result<(ConversationId, Option<String>, Option<String>), StoreError> {
    let target = run_target(cx, run_id)?;
    if target.state != "awaiting_approval" {
        return Err(StoreError::Conflict(format!(
            "run {run_id} has no draft waiting for approval (it is {})",
            target.state
        )));
    }
    Ok((target.conversation_id, target.reply_text, target.reply_to))
}

fn approve(cx: &mut Ctx<'_>, run_id: RunId, text: Option<&str>) -> Result<Written, StoreError> {
    let (conversation_id, draft, reply_to) = awaiting_draft(cx, run_id)?;
    let text = text
        .map(str::to_string)
        .or(draft)
        .ok_or_else(|| StoreError::Corrupt(format!("draft of run {run_id} has no text")))?;
    let (message_id, _) = insert_outbound(
        cx,
        NewOutbound {
            conversation_id,
            text: &text,
            dedupe_key: format!("a1:{run_id}"),
            txn_id: None,
            reply_to,
        },
    )?;
    cx.execute(
        "UPDATE agent_runs SET state = 'succeeded', reply_text = ?, reply_message_id = ? WHERE id = ?",
        params![text, message_id.to_string(), run_id.to_string()],
    )?;
    cx.changed(Change::RunUpdated(run_id));
    Ok(Written::Done)
}

fn tool_call(cx: &mut Ctx<'_>, record: &ToolCallRecord) -> Result<Written, StoreError> {
    let (outcome, result) = match &record.outcome {
        ToolOutcome::Ok(result) => ("ok", Some(result.as_str())),
        ToolOutcome::Error(error) => ("error", Some(error.as_str())),
        ToolOutcome::Refused => ("refused", None),
    };
    let id = cx.new_id().to_string();
    cx.execute(
        "INSERT INTO agent_tool_calls (id, run_id, tool, capability, arguments, outcome, result, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            id,
            record.run_id.to_string(),
            record.tool,
            if record.write { "write" } else { "read" },
            record.arguments,
            outcome,
            result,
            cx.now
        ],
    )?;
    let conversation = record.conversation_id.to_string();
    let run = record.run_id.to_string();
    match &record.effect {
        Some(ToolEffect::ProposeFact(text)) => {
            let id = cx.new_id().to_string();
            cx.execute(
                "INSERT INTO memory_facts (id, text, state, source_conversation_id, source_run_id, created_at)
                 VALUES (?, ?, 'proposed', ?, ?, ?)",
                params![id, text, conversation, run, cx.now],
            )?;
        }
        Some(ToolEffect::FollowUp { due_at, note }) => {
            let id = cx.new_id().to_string();
            cx.execute(
                "INSERT INTO follow_ups (id, conversation_id, run_id, note, due_at, state, created_at)
                 VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                params![id, conversation, run, note, ms(*due_at), cx.now],
            )?;
        }
        None => {}
    }
    Ok(Written::Done)
}

fn fire_follow_up(cx: &mut Ctx<'_>, id: FollowUpId, text: &str) -> Result<Written, StoreError> {
    let conversation_id: String = cx
        .query_optional(
            "SELECT conversation_id FROM follow_ups WHERE id = ? AND state = 'pending'",
            [id.to_string()],
            |r| r.get(0),
        )?
        .ok_or(StoreError::NotFound("pending follow-up"))?;
    let (message_id, _) = insert_outbound(
        cx,
        NewOutbound {
            conversation_id: parse_id(&conversation_id)?,
            text,
            dedupe_key: format!("f1:{id}"),
            txn_id: None,
            reply_to: None,
        },
    )?;
    cx.execute(
        "UPDATE follow_ups SET state = 'fired', message_id = ? WHERE id = ?",
        params![message_id.to_string(), id.to_string()],
    )?;
    Ok(Written::Done)
}

const RUN_COLUMNS: &str = "SELECT id, conversation_id, trigger_message_id, mode, state, reply_text, reply_message_id,
        error, model, prompt_tokens, completion_tokens, cost_micros, created_at, finished_at FROM agent_runs";

#[derive(FromRow)]
struct RunRow {
    id: String,
    conversation_id: String,
    trigger_message_id: String,
    mode: String,
    state: String,
    reply_text: Option<String>,
    reply_message_id: Option<String>,
    error: Option<String>,
    model: Option<String>,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_micros: i64,
    created_at: i64,
    finished_at: Option<i64>,
}

impl RunRow {
    fn into_view(self) -> Result<AgentRunView, StoreError> {
        let corrupt = |e: moltbot_protocol::ProtocolError| StoreError::Corrupt(e.to_string());
        Ok(AgentRunView {
            id: parse_id(&self.id)?,
            conversation_id: parse_id(&self.conversation_id)?,
            trigger_message_id: parse_id(&self.trigger_message_id)?,
            mode: self.mode.parse().map_err(corrupt)?,
            state: self.state.parse().map_err(corrupt)?,
            reply_text: self.reply_text,
            reply_message_id: self.reply_message_id.as_deref().map(parse_id).transpose()?,
            error: self.error,
            model: self.model,
            prompt_tokens: self.prompt_tokens.max(0) as u64,
            completion_tokens: self.completion_tokens.max(0) as u64,
            cost_micros: self.cost_micros.max(0) as u64,
            created_at: from_ms(self.created_at)?,
            finished_at: self.finished_at.map(from_ms).transpose()?,
        })
    }
}

pub(super) async fn run(
    conn: &mut SqliteConnection,
    id: RunId,
) -> Result<AgentRunView, StoreError> {
    let row: Option<RunRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{RUN_COLUMNS} WHERE id = ?")))
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    row.ok_or(StoreError::NotFound("agent run"))?.into_view()
}

#[derive(FromRow)]
struct FactRow {
    id: String,
    text: String,
    state: String,
    source_conversation_id: Option<String>,
    created_at: i64,
    approved_at: Option<i64>,
}

/// A queued run, as the scheduler picks it up.
#[derive(Clone, Debug)]
pub struct QueuedRun {
    pub id: RunId,
    pub conversation_id: ConversationId,
    pub trigger_message_id: MessageId,
}

/// One stored message of a conversation's history, as a run's prompt is built from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRow {
    /// Sorts as the conversation happened (minted as a message arrives, or from the time a
    /// backfilled one was sent).
    pub id: MessageId,
    /// From the person (or group members) rather than from Pi or the owner.
    pub inbound: bool,
    /// Display name of an inbound message's author.
    pub sender: Option<Arc<str>>,
    /// Shared with the prompts built from it.
    pub text: Arc<str>,
}

/// What a queued run starts from.
#[derive(Clone, Debug)]
pub struct RunStart {
    /// The newest trigger, the message the run answers.
    pub answered: MessageId,
    pub tokens_today: u64,
    pub context: RunContext,
}

/// What a run reads before it calls the model.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub conversation_title: Option<String>,
    pub connection: String,
    pub chat: String,
    pub kind: ConversationKind,
    pub summary: Option<(String, MessageId)>,
    pub facts: Vec<String>,
    /// Changes when a stored message of the conversation is edited, deleted or removed, or
    /// older ones are backfilled; a copy of the history read at the same revision differs
    /// only by newer messages.
    pub history_rev: i64,
    /// The newest messages after the summary (and after the `after` id asked for), oldest
    /// first.
    pub history: Vec<HistoryRow>,
}

#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub conversation_id: Option<ConversationId>,
    pub state: Option<RunState>,
}

/// The statement of [`read_context`]: `$target` selects `(conversation_id, trigger, tokens)`
/// from `?1` and `?2`; the trigger bounds the history (NULL: up to the newest message) and
/// `tokens` is passed through. `?3` caps the messages read and `?4` (NULL: none) is the id
/// after which they start.
macro_rules! context_sql {
    ($target:literal) => {
        concat!(
            "WITH target (conversation_id, trigger, tokens) AS (",
            $target,
            ")
         SELECT t.trigger, t.tokens, c.title, c.connection, c.provider_id, c.kind, s.summary, s.up_to,
            c.history_rev,
            (SELECT json_group_array(text) FROM
                (SELECT text FROM memory_facts WHERE state = 'approved' ORDER BY approved_at)),
            (SELECT json_group_array(json_array(id, direction, sender, text)) FROM
                (SELECT m.id, m.direction, coalesce(i.display_name, i.handle, i.provider_id) AS sender, m.text
                 FROM messages m LEFT JOIN identities i ON i.id = m.sender_id
                 WHERE m.conversation_id = t.conversation_id AND m.id > coalesce(s.up_to, '')
                   AND m.deleted_at IS NULL AND m.text IS NOT NULL
                   AND (t.trigger IS NULL OR m.id <= t.trigger) AND m.id > coalesce(?4, '')
                 ORDER BY m.id DESC LIMIT ?3))
         FROM target t JOIN conversations c ON c.id = t.conversation_id
         LEFT JOIN conversation_summaries s ON s.conversation_id = t.conversation_id"
        )
    };
}

impl Store {
    async fn agent_write(&self, write: AgentWrite) -> Result<Written, StoreError> {
        self.submit(Write::Agent(write)).await
    }

    pub async fn set_agent_mode(
        &self,
        conversation_id: ConversationId,
        mode: Option<AgentMode>,
    ) -> Result<(), StoreError> {
        self.agent_write(AgentWrite::SetMode {
            conversation_id,
            mode,
        })
        .await
        .map(drop)
    }

    /// For the first start of a run that was queued when the store opened (one an earlier
    /// process left without an outcome): counts that start, durably, and answers how many
    /// such restarts the run has had. None for any other start, and when the run is no
    /// longer queued: runs queued while the gateway runs cost no write.
    pub async fn count_restart(&self, run_id: RunId) -> Result<Option<u32>, StoreError> {
        if !self.restarts().left_over.remove(&run_id) {
            return Ok(None);
        }
        let counted = match self.agent_write(AgentWrite::CountRestart { run_id }).await {
            Ok(Written::Restarts(restarts)) => Ok(restarts),
            Ok(other) => Err(super::unexpected(other)),
            Err(e) => Err(e),
        };
        let mut restarts = self.restarts();
        match counted {
            Ok(_) => restarts.counted.insert(run_id),
            // Still owed: the run's next start in this process counts it.
            Err(_) => restarts.left_over.insert(run_id),
        };
        counted
    }

    /// Takes back the restarts counted for runs still unfinished: called when the gateway
    /// stops cleanly, which is not what the count is about (a run that takes it down).
    pub async fn uncount_unfinished_restarts(&self) -> Result<(), StoreError> {
        let run_ids: Vec<RunId> = self.restarts().counted.drain().collect();
        if run_ids.is_empty() {
            return Ok(());
        }
        self.agent_write(AgentWrite::UncountRestarts { run_ids })
            .await
            .map(drop)
    }

    fn restarts(&self) -> std::sync::MutexGuard<'_, Restarts> {
        self.restarts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn finish_run(&self, finish: RunFinish) -> Result<(), StoreError> {
        let run_id = finish.run_id;
        self.agent_write(AgentWrite::Finish(finish)).await?;
        self.restarts().counted.remove(&run_id);
        Ok(())
    }

    pub async fn approve_draft(
        &self,
        run_id: RunId,
        text: Option<String>,
    ) -> Result<(), StoreError> {
        self.agent_write(AgentWrite::Approve { run_id, text })
            .await
            .map(drop)
    }

    pub async fn reject_draft(&self, run_id: RunId) -> Result<(), StoreError> {
        self.agent_write(AgentWrite::Reject { run_id })
            .await
            .map(drop)
    }

    pub async fn record_tool_call(&self, record: ToolCallRecord) -> Result<(), StoreError> {
        self.agent_write(AgentWrite::ToolCall(record))
            .await
            .map(drop)
    }

    pub async fn save_summary(
        &self,
        conversation_id: ConversationId,
        summary: String,
        up_to: MessageId,
    ) -> Result<(), StoreError> {
        self.agent_write(AgentWrite::SaveSummary {
            conversation_id,
            summary,
            up_to,
        })
        .await
        .map(drop)
    }

    pub async fn add_fact(&self, text: String) -> Result<FactId, StoreError> {
        match self.agent_write(AgentWrite::AddFact { text }).await? {
            Written::Fact(id) => Ok(id),
            other => Err(super::unexpected(other)),
        }
    }

    pub async fn approve_fact(&self, id: FactId) -> Result<(), StoreError> {
        self.agent_write(AgentWrite::ApproveFact { id })
            .await
            .map(drop)
    }

    pub async fn delete_fact(&self, id: FactId) -> Result<(), StoreError> {
        self.agent_write(AgentWrite::DeleteFact { id })
            .await
            .map(drop)
    }

    pub async fn fire_follow_up(&self, id: FollowUpId, text: String) -> Result<(), StoreError> {
        self.agent_write(AgentWrite::FireFollowUp { id, text })
            .await
            .map(drop)
    }

    pub async fn cancel_follow_up(&self, id: FollowUpId) -> Result<(), StoreError> {
        self.agent_write(AgentWrite::CancelFollowUp { id })
            .await
            .map(drop)
    }

    pub async fn run(&self, id: RunId) -> Result<AgentRunView, StoreError> {
        run(&mut *self.reads.acquire().await?, id).await
    }

    /// Newest first; the cursor is the last run's id.
    pub async fn runs(
        &self,
        filter: &RunFilter,
        cursor: Option<RunId>,
        limit: u32,
    ) -> Result<Page<AgentRunView>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(RUN_COLUMNS);
        q.push(" WHERE 1 = 1");
        if let Some(id) = filter.conversation_id {
            q.push(" AND conversation_id = ").push_bind(id.to_string());
        }
        if let Some(state) = filter.state {
            q.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(cursor) = cursor {
            q.push(" AND id < ").push_bind(cursor.to_string());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(limit) + 1);
        let mut rows: Vec<RunRow> = q.build_query_as().fetch_all(&self.reads).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let items: Vec<AgentRunView> = rows
            .into_iter()
            .map(RunRow::into_view)
            .collect::<Result<_, _>>()?;
        let next_cursor = more
            .then(|| items.last().map(|r| r.id.to_string()))
            .flatten();
        Ok(Page { items, next_cursor })
    }

    /// Queued runs, oldest first.
    /// The oldest queued runs, leaving out the conversations in `busy` (a run stays queued
    /// while it executes).
    pub async fn queued_runs(
        &self,
        limit: usize,
        busy: &HashSet<ConversationId>,
    ) -> Result<Vec<QueuedRun>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, conversation_id, trigger_message_id FROM agent_runs
             WHERE state = 'queued' AND conversation_id NOT IN (SELECT value FROM json_each(?))
             ORDER BY created_at LIMIT ?",
        )
        .bind(id_list(busy))
        .bind(limit as i64)
        .fetch_all(&self.reads)
        .await?;
        rows.into_iter()
            .map(|(id, conversation_id, trigger)| {
                Ok(QueuedRun {
                    id: parse_id(&id)?,
                    conversation_id: parse_id(&conversation_id)?,
                    trigger_message_id: parse_id(&trigger)?,
                })
            })
            .collect()
    }

    /// Tokens spent by runs that finished on `day`.
    pub async fn tokens_on(&self, day: UsageDay) -> Result<u64, StoreError> {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT prompt_tokens + completion_tokens FROM agent_usage_daily WHERE day = ?",
        )
        .bind(day.0)
        .fetch_optional(&self.reads)
        .await?;
        Ok(total.unwrap_or(0).max(0) as u64)
    }

    pub async fn count_queued_runs(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_runs WHERE state = 'queued'")
            .fetch_one(&self.reads)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// What a queued run reads before it calls the model, in one statement: the trigger it
    /// answers now (messages that arrived meanwhile move it), the tokens spent on `day`,
    /// and its context, with only the history after `after` when given (the caller holds
    /// the rest). None when the run is no longer queued.
    pub async fn run_start(
        &self,
        run_id: RunId,
        day: UsageDay,
        max_messages: u32,
        after: Option<MessageId>,
    ) -> Result<Option<RunStart>, StoreError> {
        let row = self
            .read_on_writer(move |conn| {
                read_context(
                    conn,
                    context_sql!(
                        "SELECT conversation_id, trigger_message_id,
                            (SELECT prompt_tokens + completion_tokens FROM agent_usage_daily WHERE day = ?2)
                         FROM agent_runs WHERE id = ?1 AND state = 'queued'"
                    ),
                    run_id.to_string(),
                    Value::Integer(day.0),
                    max_messages,
                    after,
                )
            })
            .await?;
        let Some((answered, tokens_today, context)) = row.map(decode_context).transpose()? else {
            return Ok(None);
        };
        let answered =
            answered.ok_or_else(|| StoreError::Corrupt(format!("run {run_id} has no trigger")))?;
        Ok(Some(RunStart {
            answered: parse_id(&answered)?,
            tokens_today: tokens_today.unwrap_or(0).max(0) as u64,
            context,
        }))
    }

    /// The summary, approved facts and up to `max_messages` newest messages after the
    /// summary, up to and including `up_to` (all of them without).
    pub async fn run_context(
        &self,
        conversation_id: ConversationId,
        up_to: Option<MessageId>,
        max_messages: u32,
    ) -> Result<RunContext, StoreError> {
        self.read_on_writer(move |conn| {
            read_context(
                conn,
                context_sql!("SELECT ?1, ?2, NULL"),
                conversation_id.to_string(),
                up_to.map_or(Value::Null, |id| Value::Text(id.to_string())),
                max_messages,
                None,
            )
        })
        .await?
        .map(decode_context)
        .transpose()?
        .map(|(_, _, context)| context)
        .ok_or(StoreError::NotFound("conversation"))
    }

    pub async fn facts(&self) -> Result<Vec<MemoryFactView>, StoreError> {
        let rows: Vec<FactRow> = sqlx::query_as(
            "SELECT id, text, state, source_conversation_id, created_at, approved_at FROM memory_facts
             ORDER BY state = 'proposed' DESC, created_at DESC",
        )
        .fetch_all(&self.reads)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(MemoryFactView {
                    id: parse_id(&row.id)?,
                    text: row.text,
                    state: if row.state == "approved" {
                        FactState::Approved
                    } else {
                        FactState::Proposed
                    },
                    source_conversation_id: row
                        .source_conversation_id
                        .as_deref()
                        .map(parse_id)
                        .transpose()?,
                    created_at: from_ms(row.created_at)?,
                    approved_at: row.approved_at.map(from_ms).transpose()?,
                })
            })
            .collect()
    }

    /// Pending follow-ups first (soonest first), then the latest others.
    pub async fn follow_ups(&self) -> Result<Vec<FollowUpView>, StoreError> {
        self.follow_ups_where(
            "1 = 1 ORDER BY state = 'pending' DESC, due_at LIMIT 500",
            None,
        )
        .await
    }

    pub async fn due_follow_ups(&self, now: Timestamp) -> Result<Vec<FollowUpView>, StoreError> {
        self.follow_ups_where(
            "state = 'pending' AND due_at <= ? ORDER BY due_at LIMIT 100",
            Some(now),
        )
        .await
    }

    /// When the next pending follow-up is due.
    pub async fn next_follow_up(&self) -> Result<Option<Timestamp>, StoreError> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT min(due_at) FROM follow_ups WHERE state = 'pending'")
                .fetch_one(&self.reads)
                .await?;
        at.map(from_ms).transpose()
    }

    async fn follow_ups_where(
        &self,
        condition: &'static str,
        now: Option<Timestamp>,
    ) -> Result<Vec<FollowUpView>, StoreError> {
        let sql = format!(
            "SELECT id, conversation_id, note, due_at, state, message_id FROM follow_ups WHERE {condition}"
        );
        let mut query = sqlx::query_as::<_, (String, String, String, i64, String, Option<String>)>(
            sqlx::AssertSqlSafe(sql),
        );
        if let Some(now) = now {
            query = query.bind(ms(now));
        }
        query
            .fetch_all(&self.reads)
            .await?
            .into_iter()
            .map(|(id, conversation_id, note, due_at, state, message_id)| {
                Ok(FollowUpView {
                    id: parse_id(&id)?,
                    conversation_id: parse_id(&conversation_id)?,
                    note,
                    due_at: from_ms(due_at)?,
                    state: match state.as_str() {
                        "pending" => FollowUpState::Pending,
                        "fired" => FollowUpState::Fired,
                        _ => FollowUpState::Cancelled,
                    },
                    message_id: message_id.as_deref().map(parse_id).transpose()?,
                })
            })
            .collect()
    }
}

/// A [`context_sql!`] row as the statement answers it: the target's trigger and tokens,
/// the conversation, the summary, the history revision, and facts and history as JSON.
type ContextRow = (
    Option<String>,
    Option<i64>,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    String,
    String,
);

/// The target's trigger and tokens, and the context, of a decoded [`ContextRow`].
type TargetContext = (Option<String>, Option<i64>, RunContext);

/// Which runs' restarts count: see [`Store::count_restart`].
#[derive(Debug, Default)]
pub(super) struct Restarts {
    /// Queued when the store opened (left by an earlier process), not started since.
    left_over: HashSet<RunId>,
    /// Started since, their restart counted, no outcome yet.
    counted: HashSet<RunId>,
}

impl Restarts {
    /// The runs queued when the store opens: those an earlier process left without an outcome.
    pub(super) fn read(conn: &rusqlite::Connection) -> Result<Self, StoreError> {
        let mut statement = conn.prepare("SELECT id FROM agent_runs WHERE state = 'queued'")?;
        let ids = statement.query_map([], |r| r.get::<_, String>(0))?;
        Ok(Restarts {
            left_over: ids.map(|id| parse_id(&id?)).collect::<Result<_, _>>()?,
            counted: HashSet::new(),
        })
    }
}

/// Reads a conversation's context in one statement made by [`context_sql`], on the
/// writer's connection (see `Store::read_on_writer`); the caller decodes it with
/// [`decode_context`], off the writer's thread. The newest messages are found by id,
/// which the writer assigns in order, so the conversation's index yields them without
/// sorting its whole history.
fn read_context(
    conn: &rusqlite::Connection,
    sql: &'static str,
    first: String,
    second: Value,
    max_messages: u32,
    after: Option<MessageId>,
) -> Result<Option<ContextRow>, StoreError> {
    let row = conn
        .prepare_cached(sql)?
        .query_row(
            params![
                first,
                second,
                i64::from(max_messages),
                after.map(|id| id.to_string())
            ],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            },
        )
        .optional()?;
    Ok(row)
}

fn decode_context(row: ContextRow) -> Result<TargetContext, StoreError> {
    let (
        trigger,
        tokens,
        title,
        connection,
        chat,
        kind,
        summary,
        up_to,
        history_rev,
        facts,
        history,
    ) = row;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("run context: {e}"));
    let facts: Vec<String> = serde_json::from_str(&facts).map_err(corrupt)?;
    let mut history: Vec<(String, String, Option<String>, String)> =
        serde_json::from_str(&history).map_err(corrupt)?;
    // Ids are ULIDs: their text sorts as the ids do.
    history.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let context = RunContext {
        conversation_title: title,
        connection,
        chat,
        kind: kind
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
        summary: summary.zip(up_to.as_deref().map(parse_id).transpose()?),
        facts,
        history_rev,
        history: history
            .into_iter()
            .map(|(id, direction, sender, text)| {
                Ok(HistoryRow {
                    id: parse_id(&id)?,
                    inbound: direction == "inbound",
                    sender: sender.map(Arc::from),
                    text: text.into(),
                })
            })
            .collect::<Result<_, StoreError>>()?,
    };
    Ok((trigger, tokens, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_day_is_the_utc_calendar_day() {
        let at = |text: &str| text.parse::<Timestamp>().unwrap();
        let day = UsageDay::of(at("2026-11-21T23:59:59.999Z"));
        assert_eq!(day.label(), "2026-11-21");
        assert_eq!(day, UsageDay::of(at("2026-11-21T00:00:00Z")));
        assert_ne!(day, UsageDay::of(at("2026-11-22T00:00:00Z")));
        assert_eq!(
            UsageDay::of(at("1969-12-31T12:00:00Z")).label(),
            "1969-12-31"
        );
    }
}
