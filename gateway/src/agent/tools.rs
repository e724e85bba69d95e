//! The agent's tools. Each declares whether it only reads or also writes; the model is
//! offered only the tenant's allowlisted ones, and every call — allowed, failed or refused —
//! is audited with its arguments and result.

use std::sync::{Arc, LazyLock};

use jiff::{SignedDuration, Timestamp};
use moltbot_protocol::ids::{ConversationId, RunId};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

use super::model::ToolSpec;
use crate::config::ToolName;
use crate::store::{Store, StoreError, ToolCallRecord, ToolEffect, ToolOutcome};

/// Longest follow-up delay the agent may set.
const MAX_FOLLOW_UP: SignedDuration = SignedDuration::from_hours(24 * 365);
const MAX_SEARCH_HITS: u32 = 20;
const MAX_FACT_CHARS: usize = 500;

pub(super) struct Toolbox<'a> {
    pub(super) store: &'a Store,
    pub(super) run_id: RunId,
    pub(super) conversation_id: ConversationId,
    pub(super) allowed: &'a [ToolName],
    pub(super) follow_ups_changed: &'a Notify,
}

#[derive(Deserialize)]
struct SearchArgs {
    query: String,
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct FactArgs {
    fact: String,
}

#[derive(Deserialize)]
struct FollowUpArgs {
    note: String,
    #[serde(default)]
    in_minutes: Option<i64>,
    /// RFC 3339.
    #[serde(default)]
    at: Option<String>,
}

/// What a tool call did, before it is audited.
struct Done {
    result: Result<String, String>,
    effect: Option<ToolEffect>,
}

impl Done {
    fn ok(result: String) -> Self {
        Self {
            result: Ok(result),
            effect: None,
        }
    }

    fn error(message: impl Into<String>) -> Self {
        Self {
            result: Err(message.into()),
            effect: None,
        }
    }
}

impl Toolbox<'_> {
    pub(super) fn specs(&self) -> Vec<ToolSpec> {
        specs_of(self.allowed)
    }

    /// Runs one call and audits it; answers what the model reads back. Only a failing
    /// store is an error: anything wrong with the call itself is told to the model.
    pub(super) async fn call(&self, name: &str, arguments: &str) -> Result<String, StoreError> {
        let tool = ToolName::ALL
            .into_iter()
            .find(|t| t.as_str() == name && self.allowed.contains(t));
        let Some(tool) = tool else {
            self.audit(
                name_for_audit(name),
                false,
                arguments,
                ToolOutcome::Refused,
                None,
            )
            .await?;
            return Ok(format!("error: the tool {name:?} is not available"));
        };
        let done = match tool {
            ToolName::SearchMessages => self.search(arguments).await?,
            ToolName::RememberFact => remember(arguments),
            ToolName::SetFollowUp => follow_up(arguments, Timestamp::now()),
            ToolName::SummarizeConversation => self.summary().await?,
        };
        let (outcome, answer) = match done.result {
            Ok(result) => (ToolOutcome::Ok(result.clone()), result),
            Err(error) => (ToolOutcome::Error(error.clone()), format!("error: {error}")),
        };
        let wrote_follow_up = matches!(done.effect, Some(ToolEffect::FollowUp { .. }));
        self.audit(
            tool.as_str(),
            tool.writes(),
            arguments,
            outcome,
            done.effect,
        )
        .await?;
        if wrote_follow_up {
            self.follow_ups_changed.notify_one();
        }
        Ok(answer)
    }

    async fn audit(
        &self,
        tool: &'static str,
        write: bool,
        arguments: &str,
        outcome: ToolOutcome,
        effect: Option<ToolEffect>,
    ) -> Result<(), StoreError> {
        self.store
            .record_tool_call(ToolCallRecord {
                run_id: self.run_id,
                conversation_id: self.conversation_id,
                tool,
                write,
                arguments: arguments.chars().take(4096).collect(),
                outcome,
                effect,
            })
            .await
    }

    /// Searches this conversation only: a group must never read the owner's other chats.
    async fn search(&self, arguments: &str) -> Result<Done, StoreError> {
        let args: SearchArgs = match serde_json::from_str(arguments) {
            Ok(args) => args,
            Err(e) => return Ok(Done::error(format!("invalid arguments: {e}"))),
        };
        let limit = args.limit.unwrap_or(10).clamp(1, MAX_SEARCH_HITS);
        match self
            .store
            .search(&args.query, Some(self.conversation_id), None, limit)
            .await
        {
            Ok(page) => {
                let hits: Vec<_> = page
                    .items
                    .iter()
                    .map(|hit| {
                        json!({
                            "from": hit.message.sender.as_ref().and_then(|s| s.display_name.clone())
                                .unwrap_or_else(|| "me".into()),
                            "at": hit.message.sent_at,
                            "text": hit.snippet,
                        })
                    })
                    .collect();
                Ok(Done::ok(json!({ "matches": hits }).to_string()))
            }
            Err(StoreError::Invalid(message)) => Ok(Done::error(message)),
            Err(e) => Err(e),
        }
    }

    async fn summary(&self) -> Result<Done, StoreError> {
        let context = self
            .store
            .run_context(self.conversation_id, None, 20)
            .await?;
        let recent: Vec<String> = context
            .history
            .iter()
            .map(|h| {
                let who = if h.inbound {
                    h.sender.as_deref().unwrap_or("them")
                } else {
                    "me"
                };
                format!("{who}: {}", h.text)
            })
            .collect();
        Ok(Done::ok(
            json!({
                "summary": context.summary.map(|(text, _)| text),
                "recent_messages": recent,
            })
            .to_string(),
        ))
    }
}

/// A name from the model is echoed into the audit log only when it is one of ours.
fn name_for_audit(name: &str) -> &'static str {
    ToolName::ALL
        .into_iter()
        .find(|t| t.as_str() == name)
        .map_or("unknown", ToolName::as_str)
}

fn remember(arguments: &str) -> Done {
    let args: FactArgs = match serde_json::from_str(arguments) {
        Ok(args) => args,
        Err(e) => return Done::error(format!("invalid arguments: {e}")),
    };
    let fact = args.fact.trim();
    if fact.is_empty() || fact.chars().count() > MAX_FACT_CHARS {
        return Done::error(format!("a fact must have 1 to {MAX_FACT_CHARS} characters"));
    }
    Done {
        result: Ok("noted as a suggestion; the owner approves it before it is used".into()),
        effect: Some(ToolEffect::ProposeFact(fact.to_string())),
    }
}

fn follow_up(arguments: &str, now: Timestamp) -> Done {
    let args: FollowUpArgs = match serde_json::from_str(arguments) {
        Ok(args) => args,
        Err(e) => return Done::error(format!("invalid arguments: {e}")),
    };
    let note = args.note.trim();
    if note.is_empty() {
        return Done::error("the note must not be empty");
    }
    let due_at = match (args.in_minutes, args.at.as_deref()) {
        (Some(minutes), None) => now.checked_add(SignedDuration::from_mins(minutes)).ok(),
        (None, Some(at)) => at.parse::<Timestamp>().ok(),
        _ => return Done::error("give exactly one of in_minutes and at"),
    };
    let Some(due_at) = due_at else {
        return Done::error("the time is not valid (use RFC 3339 for at)");
    };
    let ahead = due_at.duration_since(now);
    if ahead < SignedDuration::from_mins(1) || ahead > MAX_FOLLOW_UP {
        return Done::error("the follow-up must be between one minute and one year ahead");
    }
    Done {
        result: Ok(format!("follow-up set for {due_at}")),
        effect: Some(ToolEffect::FollowUp {
            due_at,
            note: note.to_string(),
        }),
    }
}

/// The specs of `allowed`, in its order; each schema is built once per process.
fn specs_of(allowed: &[ToolName]) -> Vec<ToolSpec> {
    static SPECS: LazyLock<Vec<ToolSpec>> =
        LazyLock::new(|| ToolName::ALL.into_iter().map(spec).collect());
    allowed
        .iter()
        .filter_map(|tool| SPECS.iter().find(|spec| spec.name == tool.as_str()))
        .cloned()
        .collect()
}

fn spec(tool: ToolName) -> ToolSpec {
    let (description, parameters) = match tool {
        ToolName::SearchMessages => (
            "Search this conversation's earlier messages by words.",
            json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Words to look for."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_HITS}
                },
                "required": ["query"]
            }),
        ),
        ToolName::RememberFact => (
            "Suggest a lasting fact about the owner or their contacts to remember; the owner approves it first.",
            json!({
                "type": "object",
                "properties": {"fact": {"type": "string", "maxLength": MAX_FACT_CHARS}},
                "required": ["fact"]
            }),
        ),
        ToolName::SetFollowUp => (
            "Set a reminder that later nudges the person in this conversation.",
            json!({
                "type": "object",
                "properties": {
                    "note": {"type": "string", "description": "What to remind about."},
                    "in_minutes": {"type": "integer", "minimum": 1},
                    "at": {"type": "string", "description": "RFC 3339 time, instead of in_minutes."}
                },
                "required": ["note"]
            }),
        ),
        ToolName::SummarizeConversation => (
            "Read the rolling summary and the latest messages of this conversation.",
            json!({"type": "object", "properties": {}}),
        ),
    };
    ToolSpec {
        name: tool.as_str(),
        description,
        parameters: Arc::new(parameters),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_follow_the_allowlist_and_share_their_schemas() {
        let allowed = [ToolName::SetFollowUp, ToolName::SearchMessages];
        let specs = specs_of(&allowed);
        let names: Vec<_> = specs.iter().map(|spec| spec.name).collect();
        assert_eq!(names, ["set_follow_up", "search_messages"]);
        assert_eq!(specs[1].parameters["required"], json!(["query"]));
        let again = specs_of(&ToolName::ALL);
        assert_eq!(again.len(), ToolName::ALL.len());
        assert!(Arc::ptr_eq(&specs[1].parameters, &again[0].parameters));
        assert!(specs_of(&[]).is_empty());
    }

    #[test]
    fn follow_up_needs_one_time_within_bounds() {
        let now: Timestamp = "2026-11-21T12:00:00Z".parse().unwrap();
        let ok = follow_up(r#"{"note":"call Bob","in_minutes":30}"#, now);
        match ok.effect {
            Some(ToolEffect::FollowUp { due_at, note }) => {
                assert_eq!(due_at, "2026-11-21T12:30:00Z".parse::<Timestamp>().unwrap());
                assert_eq!(note, "call Bob");
            }
            other => panic!("expected a follow-up, got {other:?}"),
        }
        let at = follow_up(r#"{"note":"x","at":"2026-11-22T09:00:00Z"}"#, now);
        assert!(at.result.is_ok());
        for bad in [
            r#"{"note":"x"}"#,
            r#"{"note":"x","in_minutes":5,"at":"2026-11-22T09:00:00Z"}"#,
            r#"{"note":"","in_minutes":5}"#,
            r#"{"note":"x","in_minutes":0}"#,
            r#"{"note":"x","in_minutes":99999999}"#,
            r#"{"note":"x","at":"tomorrow"}"#,
            r#"not json"#,
        ] {
            let done = follow_up(bad, now);
            assert!(done.result.is_err(), "{bad} should be refused");
            assert!(done.effect.is_none(), "{bad} must change nothing");
        }
    }

    #[test]
    fn facts_are_proposed_not_approved_and_bounded() {
        let done = remember(r#"{"fact":"Ann is vegetarian"}"#);
        assert!(
            matches!(done.effect, Some(ToolEffect::ProposeFact(ref f)) if f == "Ann is vegetarian")
        );
        let long = format!(r#"{{"fact":"{}"}}"#, "x".repeat(MAX_FACT_CHARS + 1));
        assert!(remember(&long).effect.is_none());
        assert!(remember(r#"{"fact":"  "}"#).effect.is_none());
    }

    #[test]
    fn every_tool_has_an_object_schema() {
        for tool in ToolName::ALL {
            let spec = spec(tool);
            assert_eq!(spec.name, tool.as_str());
            assert_eq!(spec.parameters["type"], "object");
        }
    }
}
