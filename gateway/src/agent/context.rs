//! The prompt of one agent turn, built within a token budget.
//!
//! Pure functions, no I/O. Token counts are estimates (about four characters a token) so
//! that the result is deterministic and needs no tokenizer per model; the budget should
//! leave some headroom below the model's real context window.
//!
//! What the prompt holds, by priority when the budget is short:
//!
//! 1. the system prompt, the current time and the conversation's title (never cut);
//! 2. the newest history message (cut in the middle if it alone is over budget);
//! 3. the summary of the earlier conversation, then the remembered facts, newest first
//!    (the oldest facts are dropped first; the summary is cut only when no fact is left);
//! 4. as many older history messages as fit, newest first. Those that do not fit are the
//!    oldest part of the history and are reported as [`Overflow`], for the caller to fold
//!    into the rolling summary with [`summary_request`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use moltbot_protocol::ids::MessageId;

use super::model::{ChatMessage, ChatRequest};
use crate::store::HistoryRow;

/// Tokens a message costs beyond its text (role and framing), as OpenAI's guidance counts.
pub(crate) const MESSAGE_OVERHEAD_TOKENS: u32 = 4;

/// The newest message keeps at least this many tokens of text even when the system prompt
/// leaves less room, so that the model always sees what it is answering.
const MIN_NEWEST_TOKENS: u32 = 64;

/// A summary cut to fewer tokens than this says too little to be worth its header.
const MIN_SUMMARY_TOKENS: u32 = 32;

/// Longest conversation title put in the prompt, in characters.
const MAX_TITLE_CHARS: usize = 200;

/// One message folded into a summary is cut to this many tokens, so that a single pasted
/// document cannot crowd out the rest of the conversation.
const MAX_SUMMARISED_MESSAGE_TOKENS: u32 = 1_000;

const FACTS_HEADER: &str = "Things the person asked you to remember:";
const SUMMARY_HEADER: &str = "Summary of the earlier conversation:";
const SECTION_SEPARATOR: &str = "\n\n";
const CUT_MARKER: &str = "\n[… shortened …]\n";

/// Estimated tokens of `text`: its characters divided by four, rounded up.
///
/// Deterministic and tokenizer-free; close enough for English, low for some scripts (the
/// budget's headroom absorbs that). An upper bound under concatenation:
/// `estimate_tokens(a + b) <= estimate_tokens(a) + estimate_tokens(b)`.
pub(crate) fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX)
}

/// Estimated tokens of one chat message: its text, names and tool calls plus
/// [`MESSAGE_OVERHEAD_TOKENS`].
pub(crate) fn estimate_message_tokens(message: &ChatMessage) -> u32 {
    let body = match message {
        ChatMessage::System(text) => estimate_tokens(text),
        ChatMessage::User { name, text } => {
            estimate_tokens(text).saturating_add(name.as_deref().map_or(0, estimate_tokens))
        }
        ChatMessage::Assistant { text, tool_calls } => {
            tool_calls
                .iter()
                .fold(text.as_deref().map_or(0, estimate_tokens), |sum, call| {
                    sum.saturating_add(estimate_tokens(&call.id))
                        .saturating_add(estimate_tokens(&call.name))
                        .saturating_add(estimate_tokens(&call.arguments))
                })
        }
        ChatMessage::Tool { call_id, content } => {
            estimate_tokens(call_id).saturating_add(estimate_tokens(content))
        }
    };
    MESSAGE_OVERHEAD_TOKENS.saturating_add(body)
}

/// What [`build`] makes the prompt from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ContextInput<'a> {
    pub system_prompt: &'a str,
    /// Approved memory, oldest first.
    pub facts: &'a [String],
    /// The rolling summary of messages older than `history`.
    pub summary: Option<&'a str>,
    /// Oldest first.
    pub history: &'a [HistoryRow],
    /// The model's context as this gateway budgets it (`agent.context_tokens`).
    pub budget_tokens: u32,
    /// Kept free for the answer (`agent.max_reply_tokens`).
    pub reply_tokens: u32,
    pub now: jiff::Timestamp,
    pub conversation_title: Option<&'a str>,
}

/// The messages of a chat request, without the tool round's messages.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Context {
    /// The system message, then history in chronological order.
    pub messages: Vec<ChatMessage>,
    /// Estimate of `messages` ([`estimate_message_tokens`] summed).
    pub estimated_tokens: u32,
    /// History messages that did not fit (oldest part): the caller folds them into the summary.
    pub overflow: Option<Overflow>,
}

/// The oldest history messages that [`build`] left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Overflow {
    /// The newest message left out: every message up to and including it is out.
    pub up_to: MessageId,
    /// How many messages were left out.
    pub messages: usize,
}

/// Builds the prompt: the system message, then as many of the newest history messages as
/// fit in `budget_tokens - reply_tokens`. See the module documentation for priorities.
///
/// `estimated_tokens <= budget_tokens - reply_tokens` holds unless the system prompt
/// alone leaves less than a few dozen tokens for the newest message.
pub(crate) fn build(input: &ContextInput) -> Context {
    let available = input.budget_tokens.saturating_sub(input.reply_tokens);
    let base = base_system_text(input);
    let mut left =
        available.saturating_sub(MESSAGE_OVERHEAD_TOKENS.saturating_add(estimate_tokens(&base)));

    // The newest message comes before memory: without it there is nothing to answer.
    let (older, newest) = match input.history.split_last() {
        Some((newest, older)) => (older, Some(newest)),
        None => (input.history, None),
    };
    let newest = newest.map(|message| {
        let name_tokens = sender_of(message).map_or(0, estimate_tokens);
        let room = left
            .saturating_sub(MESSAGE_OVERHEAD_TOKENS.saturating_add(name_tokens))
            .max(MIN_NEWEST_TOKENS);
        let text = match truncate_middle(&message.text, room) {
            Cow::Borrowed(_) => message.text.clone(),
            Cow::Owned(cut) => cut.into(),
        };
        let chat = chat_message(message, text);
        let tokens = estimate_message_tokens(&chat);
        left = left.saturating_sub(tokens);
        (chat, tokens)
    });

    let system = with_memory(base, input.facts, input.summary, &mut left);

    // Newest first, stopping at the first that does not fit, so that what is left out is
    // one contiguous oldest part that a summary can replace.
    let mut kept = Vec::with_capacity(older.len());
    let mut kept_tokens = 0_u32;
    let mut overflow = None;
    for (index, message) in older.iter().enumerate().rev() {
        let chat = chat_message(message, message.text.clone());
        let tokens = estimate_message_tokens(&chat);
        if tokens > left {
            overflow = Some(Overflow {
                up_to: message.id,
                messages: index + 1,
            });
            break;
        }
        left -= tokens;
        kept_tokens = kept_tokens.saturating_add(tokens);
        kept.push(chat);
    }

    let system = ChatMessage::System(system);
    // Each message is estimated once, as it is placed.
    let estimated_tokens = estimate_message_tokens(&system)
        .saturating_add(kept_tokens)
        .saturating_add(newest.as_ref().map_or(0, |(_, tokens)| *tokens));
    let mut messages = Vec::with_capacity(kept.len() + 2);
    messages.push(system);
    messages.extend(kept.into_iter().rev());
    messages.extend(newest.map(|(chat, _)| chat));
    Context {
        messages,
        estimated_tokens,
        overflow,
    }
}

/// The request that folds `older` into `previous` summary (for the rolling summary).
///
/// The answer is the new summary. Each message is cut to a bounded size; the caller
/// bounds how many messages one request folds in.
pub(crate) fn summary_request(
    previous: Option<&str>,
    older: &[HistoryRow],
    max_tokens: u32,
) -> ChatRequest {
    // About three quarters of a word per token.
    let words = (u64::from(max_tokens) * 3 / 4).max(20);
    let system = format!(
        "You maintain the running summary of a conversation between a person and Pi, the \
         assistant answering on the owner's behalf. Update the summary so that it also covers \
         the new messages. Keep what later replies need: names, facts about the people, \
         decisions, promises, dates, open questions. Drop small talk. Write plain prose of at \
         most {words} words, in the conversation's language. Reply with the summary only."
    );
    let mut text = String::new();
    match previous.map(str::trim).filter(|s| !s.is_empty()) {
        Some(previous) => {
            let _ = write!(text, "Summary so far:\n{previous}\n\nNew messages:\n");
        }
        None => text.push_str("There is no summary yet.\n\nMessages:\n"),
    }
    for message in older {
        let who = if message.inbound {
            sender_of(message).unwrap_or("Person")
        } else {
            "Pi"
        };
        // A name is one line, whatever the channel allowed.
        let who = who.replace(['\n', '\r'], " ");
        let said = truncate_middle(&message.text, MAX_SUMMARISED_MESSAGE_TOKENS);
        let _ = writeln!(text, "{who}: {said}");
    }
    ChatRequest {
        messages: vec![
            ChatMessage::System(system),
            ChatMessage::User {
                name: None,
                text: text.into(),
            },
        ],
        tools: Vec::new(),
        max_tokens,
    }
}

/// The system prompt with the current time and the conversation's title: never cut.
fn base_system_text(input: &ContextInput) -> String {
    // jiff formats a timestamp in UTC; on the (unexpected) error RFC 3339 still says it.
    let time = jiff::fmt::strtime::format("%A, %Y-%m-%d %H:%M UTC", input.now)
        .unwrap_or_else(|_| input.now.to_string());
    let mut text = format!(
        "{}\n\nCurrent time: {time}.",
        input.system_prompt.trim_end()
    );
    if let Some(title) = input
        .conversation_title
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let title: String = title
            .chars()
            .take(MAX_TITLE_CHARS)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = write!(text, "\nConversation: {title}");
    }
    text
}

/// `base` followed by the summary and as many of the newest facts as fit in `left`, which
/// is reduced by what they cost.
fn with_memory(
    mut base: String,
    facts: &[String],
    summary: Option<&str>,
    left: &mut u32,
) -> String {
    let section_cost = estimate_tokens(SECTION_SEPARATOR);

    let mut summary_section = None;
    if let Some(summary) = summary.map(str::trim).filter(|s| !s.is_empty()) {
        let fixed = section_cost
            .saturating_add(estimate_tokens(SUMMARY_HEADER))
            .saturating_add(1);
        let room = left.saturating_sub(fixed);
        if room >= MIN_SUMMARY_TOKENS.min(estimate_tokens(summary)) && room > 0 {
            let text = truncate_middle(summary, room);
            *left = left.saturating_sub(fixed.saturating_add(estimate_tokens(&text)));
            summary_section = Some(text.into_owned());
        }
    }

    // Newest facts first, stopping at the first that does not fit: the oldest go first.
    let header_cost = section_cost.saturating_add(estimate_tokens(FACTS_HEADER));
    let mut kept: Vec<&str> = Vec::new();
    let mut facts_cost = header_cost;
    for fact in facts
        .iter()
        .rev()
        .map(|f| f.trim())
        .filter(|f| !f.is_empty())
    {
        let cost = estimate_tokens(&fact_line(fact));
        if facts_cost.saturating_add(cost) > *left {
            break;
        }
        facts_cost += cost;
        kept.push(fact);
    }
    if !kept.is_empty() {
        *left -= facts_cost;
        base.push_str(SECTION_SEPARATOR);
        base.push_str(FACTS_HEADER);
        for fact in kept.iter().rev() {
            base.push_str(&fact_line(fact));
        }
    }
    if let Some(summary) = summary_section {
        base.push_str(SECTION_SEPARATOR);
        base.push_str(SUMMARY_HEADER);
        base.push('\n');
        base.push_str(&summary);
    }
    base
}

fn fact_line(fact: &str) -> String {
    format!("\n- {fact}")
}

fn sender_of(message: &HistoryRow) -> Option<&str> {
    message
        .sender
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Inbound messages are the user's, outbound ones Pi's (or the owner's, in Pi's voice).
fn chat_message(message: &HistoryRow, text: Arc<str>) -> ChatMessage {
    if message.inbound {
        // The stored name is shared, unless trimming changed it.
        let name = sender_of(message).map(|name| match &message.sender {
            Some(stored) if stored.len() == name.len() => stored.clone(),
            _ => Arc::from(name),
        });
        ChatMessage::User { name, text }
    } else {
        ChatMessage::Assistant {
            text: Some(text),
            tool_calls: Vec::new(),
        }
    }
}

/// `text` cut to at most `max_tokens` estimated tokens, keeping its start and its end
/// (a question often follows a long paste) around a marker; borrowed when it fits.
fn truncate_middle(text: &str, max_tokens: u32) -> Cow<'_, str> {
    let max_chars = usize::try_from(max_tokens)
        .unwrap_or(usize::MAX)
        .saturating_mul(4);
    let chars = text.chars().count();
    if chars <= max_chars {
        return Cow::Borrowed(text);
    }
    let marker = CUT_MARKER.chars().count();
    if max_chars <= marker * 2 {
        return Cow::Owned(text.chars().take(max_chars).collect());
    }
    let keep = max_chars - marker;
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let mut out: String = text.chars().take(head).collect();
    out.push_str(CUT_MARKER);
    out.extend(text.chars().skip(chars - tail));
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2025-03-04T10:15:00Z";

    /// The `n`th message: its id's time is `n`.
    fn message(n: u64, inbound: bool, text: &str) -> HistoryRow {
        HistoryRow {
            id: MessageId(ulid::Ulid::from_parts(n, 0)),
            inbound,
            sender: inbound.then(|| "Ann".into()),
            text: text.into(),
        }
    }

    /// Messages 1 to `count` alternating person / Pi, each about 25 tokens.
    fn history(count: u64) -> Vec<HistoryRow> {
        (1..=count)
            .map(|n| message(n, n % 2 == 1, &format!("message {n:03} {}", "x".repeat(84))))
            .collect()
    }

    fn input<'a>(history: &'a [HistoryRow], facts: &'a [String], budget: u32) -> ContextInput<'a> {
        ContextInput {
            system_prompt: "You are Pi.",
            facts,
            summary: None,
            history,
            budget_tokens: budget,
            reply_tokens: 100,
            now: NOW.parse().expect("timestamp parses"),
            conversation_title: None,
        }
    }

    fn system_text(context: &Context) -> &str {
        match &context.messages[0] {
            ChatMessage::System(text) => text,
            other => panic!("first message is not the system message: {other:?}"),
        }
    }

    fn text_of(message: &ChatMessage) -> &str {
        match message {
            ChatMessage::User { text, .. } => text,
            ChatMessage::Assistant {
                text: Some(text), ..
            } => text,
            other => panic!("not a history message: {other:?}"),
        }
    }

    #[test]
    fn estimate_is_chars_over_four_rounded_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        // Characters, not bytes.
        assert_eq!(estimate_tokens("ééééé"), 2);
        assert_eq!(
            estimate_message_tokens(&ChatMessage::User {
                name: Some("Ann".into()),
                text: "hello".into()
            }),
            4 + 2 + 1
        );
    }

    #[test]
    fn a_sender_name_is_trimmed_a_blank_one_left_out_and_every_message_counted() {
        let mut history = history(3);
        history[0].sender = Some("  Ann Lee \n".into());
        history[2].sender = Some("   ".into());

        let context = build(&input(&history, &[], 10_000));

        assert_eq!(
            context.messages[1],
            ChatMessage::User {
                name: Some("Ann Lee".into()),
                text: history[0].text.clone()
            }
        );
        assert_eq!(
            context.messages[3],
            ChatMessage::User {
                name: None,
                text: history[2].text.clone()
            }
        );
        let counted = context
            .messages
            .iter()
            .map(estimate_message_tokens)
            .sum::<u32>();
        assert_eq!(context.estimated_tokens, counted);
    }

    #[test]
    fn everything_fits_in_a_large_budget() {
        let history = history(6);
        let facts = vec!["likes tea".to_owned()];
        let mut input = input(&history, &facts, 10_000);
        input.summary = Some("They met in Lisbon.");
        input.conversation_title = Some("Ann");

        let context = build(&input);

        assert_eq!(context.overflow, None);
        assert_eq!(context.messages.len(), 7);
        let system = system_text(&context);
        assert!(system.starts_with("You are Pi.\n\nCurrent time: Tuesday, 2025-03-04 10:15 UTC."));
        assert!(system.contains("\nConversation: Ann"));
        assert!(system.contains("Things the person asked you to remember:\n- likes tea"));
        assert!(system.contains("Summary of the earlier conversation:\nThey met in Lisbon."));
        assert_eq!(
            context.messages[1],
            ChatMessage::User {
                name: Some("Ann".into()),
                text: history[0].text.clone()
            }
        );
        assert_eq!(
            context.messages[2],
            ChatMessage::Assistant {
                text: Some(history[1].text.clone()),
                tool_calls: vec![]
            }
        );
        let sum: u32 = context.messages.iter().map(estimate_message_tokens).sum();
        assert_eq!(context.estimated_tokens, sum);
    }

    #[test]
    fn budget_is_respected_and_newest_kept_in_order_with_overflow() {
        let history = history(40);
        let facts = vec!["likes tea".to_owned()];
        let input = input(&history, &facts, 500);

        let context = build(&input);

        assert!(
            context.estimated_tokens <= 500 - 100,
            "{} tokens",
            context.estimated_tokens
        );
        let texts: Vec<&str> = context.messages[1..].iter().map(text_of).collect();
        assert!(texts.len() > 3 && texts.len() < 40, "{} kept", texts.len());
        assert_eq!(
            *texts.last().unwrap(),
            &*history[39].text,
            "newest kept, last"
        );
        // Chronological: a contiguous run of the newest messages.
        let first_kept = 40 - texts.len();
        let expected: Vec<&str> = history[first_kept..].iter().map(|m| &*m.text).collect();
        assert_eq!(texts, expected);
        assert_eq!(
            context.overflow,
            Some(Overflow {
                up_to: history[first_kept - 1].id,
                messages: first_kept,
            })
        );
        // Roles follow direction.
        assert!(matches!(
            context.messages.last(),
            Some(ChatMessage::Assistant { .. })
        ));
    }

    #[test]
    fn empty_history_gives_the_system_message_only() {
        let facts = vec!["likes tea".to_owned()];
        let context = build(&input(&[], &facts, 1_000));

        assert_eq!(context.messages.len(), 1);
        assert!(system_text(&context).contains("- likes tea"));
        assert_eq!(context.overflow, None);
        assert_eq!(
            context.estimated_tokens,
            estimate_message_tokens(&context.messages[0])
        );
    }

    #[test]
    fn oldest_facts_are_dropped_before_the_newest_message() {
        let history = vec![message(7, true, &"q".repeat(400))]; // 100 tokens
        let facts: Vec<String> = (1..=30)
            .map(|i| format!("fact number {i:02} {}", "f".repeat(30)))
            .collect();
        let input = input(&history, &facts, 400);

        let context = build(&input);

        assert!(
            context.estimated_tokens <= 300,
            "{}",
            context.estimated_tokens
        );
        assert_eq!(
            text_of(&context.messages[1]),
            &*history[0].text,
            "newest intact"
        );
        let system = system_text(&context);
        assert!(system.contains("fact number 30"), "newest fact kept");
        assert!(!system.contains("fact number 01"), "oldest fact dropped");
        // The kept facts are the newest ones, in their original order.
        let kept: Vec<&str> = system.lines().filter(|l| l.starts_with("- ")).collect();
        assert!(kept.len() < 30);
        let expected: Vec<String> = facts[30 - kept.len()..]
            .iter()
            .map(|f| format!("- {f}"))
            .collect();
        assert_eq!(kept, expected);
        assert_eq!(context.overflow, None);
    }

    #[test]
    fn summary_outranks_facts() {
        let history = vec![message(1, true, "hi")];
        let facts: Vec<String> = (1..=50)
            .map(|i| format!("fact {i:02} {}", "f".repeat(40)))
            .collect();
        let summary = "s".repeat(400);
        let mut input = input(&history, &facts, 450);
        input.summary = Some(&summary);

        let context = build(&input);

        assert!(context.estimated_tokens <= 350);
        let system = system_text(&context);
        assert!(system.contains(&summary), "summary kept whole");
        assert!(system.contains("fact 50"));
        assert!(!system.contains("fact 01"));
    }

    #[test]
    fn a_single_huge_message_is_truncated_to_fit() {
        let huge = format!("START {} END?", "z".repeat(100_000));
        let history = vec![message(1, true, "older"), message(2, true, &huge)];
        let context = build(&input(&history, &[], 1_000));

        assert!(
            context.estimated_tokens <= 900,
            "{}",
            context.estimated_tokens
        );
        assert_eq!(
            context.messages.len(),
            2,
            "system and the newest message only"
        );
        let text = text_of(&context.messages[1]);
        assert!(text.starts_with("START "));
        assert!(text.ends_with(" END?"), "the end (the question) is kept");
        assert!(text.contains("[… shortened …]"));
        assert!(text.chars().count() < 4_000);
        assert_eq!(
            context.overflow,
            Some(Overflow {
                up_to: MessageId(ulid::Ulid::from_parts(1, 0)),
                messages: 1
            })
        );
    }

    #[test]
    fn truncate_middle_stays_within_its_limit() {
        for limit in [0, 1, 5, 10, 100] {
            let long = "ab".repeat(1_000);
            let cut = truncate_middle(&long, limit);
            assert!(
                estimate_tokens(&cut) <= limit,
                "{limit}: {}",
                estimate_tokens(&cut)
            );
        }
        assert_eq!(truncate_middle("short", 10), "short");
    }

    #[test]
    fn summary_request_holds_the_previous_summary_and_the_messages() {
        let older = vec![
            HistoryRow {
                sender: Some("Ann\nB".into()),
                ..message(1, true, "I moved to Porto")
            },
            message(2, false, "Congratulations!"),
        ];

        let request = summary_request(Some("Ann likes tea."), &older, 300);

        assert_eq!(request.max_tokens, 300);
        assert!(request.tools.is_empty());
        assert!(matches!(&request.messages[0], ChatMessage::System(s) if s.contains("225 words")));
        let ChatMessage::User { text, .. } = &request.messages[1] else {
            panic!("second message is the user's");
        };
        assert!(text.starts_with("Summary so far:\nAnn likes tea.\n\nNew messages:\n"));
        assert!(text.contains("Ann B: I moved to Porto\nPi: Congratulations!\n"));

        let first = summary_request(None, &older, 300);
        assert!(
            matches!(&first.messages[1], ChatMessage::User { text, .. } if text.starts_with("There is no summary yet."))
        );
    }
}
