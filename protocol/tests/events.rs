use jiff::Timestamp;
use moltbot_protocol::event::*;
use moltbot_protocol::ids::{ConversationId, MessageId};
use moltbot_protocol::inbox::{ClientFrame, ServerFrame};
use moltbot_protocol::{Event, EventType, ProtocolError, SCHEMA_VERSION};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn source() -> Source {
    Source {
        channel: Channel::Telegram,
        connection: "tg-main".into(),
    }
}

fn participant(id: &str) -> Participant {
    Participant {
        provider_id: id.into(),
        display_name: Some("Ada".into()),
        handle: None,
    }
}

fn received(provider_message_id: Option<&str>, text: &str, sent_at: &str) -> Event {
    Event::new(
        source(),
        ts(sent_at),
        EventBody::MessageReceived(MessageReceived {
            conversation: ConversationRef {
                provider_id: "chat-1".into(),
                kind: ConversationKind::Dm,
                title: None,
            },
            provider_message_id: provider_message_id.map(Into::into),
            sender: participant("user-7"),
            text: Some(text.into()),
            reply_to: None,
            attachments: vec![],
            sent_at: ts(sent_at),
            mentions_self: false,
        }),
    )
}

/// One event of every type, so a new type cannot be added without a round-trip case.
fn one_of_each() -> Vec<Event> {
    let at = ts("2026-11-21T10:00:00Z");
    let reaction = Reaction {
        conversation: "chat-1".into(),
        provider_message_id: "42".into(),
        sender: participant("user-7"),
        emoji: "👍".into(),
    };
    let conversation = ConversationRef {
        provider_id: "chat-1".into(),
        kind: ConversationKind::Group,
        title: Some("Family".into()),
    };
    let bodies = vec![
        EventBody::MessageReceived(MessageReceived {
            conversation: conversation.clone(),
            provider_message_id: Some("42".into()),
            sender: participant("user-7"),
            text: Some("hello ✓".into()),
            reply_to: Some("41".into()),
            attachments: vec![Attachment {
                kind: AttachmentKind::Image,
                mime_type: Some("image/jpeg".into()),
                size_bytes: Some(1234),
                file_name: None,
                provider_file_id: Some("file-9".into()),
            }],
            sent_at: at,
            mentions_self: false,
        }),
        EventBody::MessageEdited(MessageEdited {
            conversation: "chat-1".into(),
            provider_message_id: "42".into(),
            text: Some("hello again".into()),
            edited_at: at,
        }),
        EventBody::MessageDeleted(MessageDeleted {
            conversation: "chat-1".into(),
            provider_message_id: "42".into(),
        }),
        EventBody::ReactionAdded(reaction.clone()),
        EventBody::ReactionRemoved(reaction),
        EventBody::ConversationCreated(conversation.clone()),
        EventBody::ConversationUpdated(conversation),
        EventBody::ConnectionStateChanged(ConnectionStateChanged {
            state: ConnectionState::ActionRequired,
            reason: Some("token revoked".into()),
        }),
        EventBody::MediaAvailable(MediaAvailable {
            conversation: "chat-1".into(),
            provider_message_id: "42".into(),
            sha256: "ab".repeat(32),
            mime_type: "image/jpeg".into(),
            size_bytes: 1234,
            storage_key: "media/ab".into(),
        }),
        EventBody::AgentRequested(AgentRequested {
            conversation_id: ConversationId::new(),
            trigger_message_id: MessageId::new(),
        }),
        EventBody::AgentResponded(AgentResponded {
            conversation_id: ConversationId::new(),
            trigger_message_id: MessageId::new(),
            reply_message_id: Some(MessageId::new()),
        }),
        EventBody::AgentBudgetExhausted(AgentBudgetExhausted {
            conversation_id: ConversationId::new(),
            day: "2026-11-21".into(),
            tokens_used: 200_000,
            tokens_per_day: 200_000,
        }),
    ];
    bodies
        .into_iter()
        .map(|b| Event::new(source(), at, b))
        .collect()
}

#[test]
fn every_event_type_round_trips_through_json() {
    let events = one_of_each();
    let types: Vec<EventType> = events.iter().map(Event::event_type).collect();
    assert_eq!(
        types,
        EventType::ALL,
        "one_of_each must cover every type, in order"
    );
    for event in events {
        let json = event.to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["schema_version"], SCHEMA_VERSION);
        assert_eq!(value["type"], event.event_type().as_str());
        assert_eq!(value["id"], event.id.to_string());
        assert_eq!(value["dedupe_key"], event.dedupe_key().as_str());
        let back = Event::from_slice(json.as_bytes(), 1 << 20).unwrap();
        assert_eq!(back, event);
        // The serde impls agree with the explicit ones.
        let via_serde: Event =
            serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
        assert_eq!(via_serde, event);
    }
}

#[test]
fn wire_form_is_the_documented_shape() {
    let json = r#"{"schema_version":1,"id":"01JD0000000000000000000000","occurred_at":"2026-11-21T10:00:00Z",
        "source":{"channel":"webchat","connection":"webchat"},"type":"message.received",
        "data":{"conversation":{"provider_id":"s1"},"sender":{"provider_id":"me"},"text":"hi","sent_at":"2026-11-21T10:00:00Z"}}"#;
    let event = Event::from_slice(json.as_bytes(), 4096).unwrap();
    assert_eq!(event.id.to_string(), "01JD0000000000000000000000");
    assert_eq!(event.source.channel, Channel::Webchat);
    let EventBody::MessageReceived(m) = &event.body else {
        panic!("wrong body: {:?}", event.body)
    };
    assert_eq!(
        m.conversation.kind,
        ConversationKind::Dm,
        "kind defaults to dm"
    );
    assert_eq!(m.text.as_deref(), Some("hi"));
}

/// The store keeps these names as text; they must be the wire names.
#[test]
fn enum_names_match_their_wire_form() {
    for kind in AttachmentKind::ALL {
        assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
    }
    for channel in Channel::ALL {
        assert_eq!(serde_json::to_value(channel).unwrap(), channel.as_str());
    }
}

#[test]
fn unknown_type_is_its_own_error() {
    let json = received(Some("1"), "x", "2026-11-21T10:00:00Z")
        .to_json()
        .replace("message.received", "message.teleported");
    match Event::from_slice(json.as_bytes(), 1 << 20) {
        Err(ProtocolError::UnknownEventType(t)) => assert_eq!(t, "message.teleported"),
        other => panic!("expected UnknownEventType, got {other:?}"),
    }
}

#[test]
fn oversized_payload_is_refused_before_parsing() {
    let json = received(Some("1"), &"x".repeat(2000), "2026-11-21T10:00:00Z").to_json();
    match Event::from_slice(json.as_bytes(), 1000) {
        Err(ProtocolError::PayloadTooLarge { size, limit }) => {
            assert_eq!(size, json.len());
            assert_eq!(limit, 1000);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    // Garbage that is too large is refused for its size, not its content.
    assert!(matches!(
        Event::from_slice(&[0xff; 2000], 1000),
        Err(ProtocolError::PayloadTooLarge { .. })
    ));
}

#[test]
fn invalid_utf8_malformed_json_and_bad_fields_are_typed() {
    let mut bytes = received(Some("1"), "abc", "2026-11-21T10:00:00Z")
        .to_json()
        .into_bytes();
    let pos = bytes.windows(3).position(|w| w == b"abc").unwrap();
    bytes[pos + 1] = 0xc3; // a lone lead byte
    assert!(matches!(
        Event::from_slice(&bytes, 1 << 20),
        Err(ProtocolError::InvalidUtf8 { offset }) if offset == pos + 1
    ));
    assert!(matches!(
        Event::from_slice(b"{\"schema_version\":1", 1 << 20),
        Err(ProtocolError::Malformed(_))
    ));
    assert!(matches!(
        Event::from_slice(b"[]", 1 << 20),
        Err(ProtocolError::Malformed(_))
    ));

    let future = received(Some("1"), "x", "2026-11-21T10:00:00Z")
        .to_json()
        .replace("\"schema_version\":1", "\"schema_version\":9");
    assert!(matches!(
        Event::from_slice(future.as_bytes(), 1 << 20),
        Err(ProtocolError::UnsupportedSchemaVersion {
            found: 9,
            supported: 1
        })
    ));

    let empty_sender = received(Some("1"), "x", "2026-11-21T10:00:00Z")
        .to_json()
        .replace("\"user-7\"", "\"\"");
    assert!(matches!(
        Event::from_slice(empty_sender.as_bytes(), 1 << 20),
        Err(ProtocolError::InvalidField {
            field: "data.sender.provider_id",
            ..
        })
    ));
    let no_content = received(Some("1"), "", "2026-11-21T10:00:00Z").to_json();
    assert!(matches!(
        Event::from_slice(no_content.as_bytes(), 1 << 20),
        Err(ProtocolError::InvalidField {
            field: "data.text",
            ..
        })
    ));
    let unknown_channel = received(Some("1"), "x", "2026-11-21T10:00:00Z")
        .to_json()
        .replace("\"telegram\"", "\"pager\"");
    assert!(matches!(
        Event::from_slice(unknown_channel.as_bytes(), 1 << 20),
        Err(ProtocolError::Malformed(_))
    ));
}

#[test]
fn provider_id_decides_the_dedupe_key_when_present() {
    let a = received(Some("42"), "hello", "2026-11-21T10:00:00Z");
    let redelivered = received(
        Some("42"),
        "hello (edited by a buggy provider)",
        "2026-11-21T11:00:00Z",
    );
    assert_ne!(a.id, redelivered.id, "each delivery is its own event");
    assert_eq!(a.dedupe_key(), redelivered.dedupe_key());
    assert!(a.dedupe_key().as_str().starts_with("p1:"));
    assert_ne!(
        a.dedupe_key(),
        received(Some("43"), "hello", "2026-11-21T10:00:00Z").dedupe_key()
    );

    let mut other_connection = a.clone();
    other_connection.source.connection = "tg-second".into();
    assert_ne!(a.dedupe_key(), other_connection.dedupe_key());
}

#[test]
fn without_provider_id_the_key_hashes_sender_conversation_bucket_and_content() {
    let a = received(None, "hello", "2026-11-21T10:00:01Z");
    assert!(a.dedupe_key().as_str().starts_with("h1:"));
    // Same bucket, same content: one message.
    assert_eq!(
        a.dedupe_key(),
        received(None, "hello", "2026-11-21T10:00:08Z").dedupe_key()
    );
    // Next bucket, other content, other sender, other conversation: different.
    assert_ne!(
        a.dedupe_key(),
        received(None, "hello", "2026-11-21T10:00:11Z").dedupe_key()
    );
    assert_ne!(
        a.dedupe_key(),
        received(None, "hello!", "2026-11-21T10:00:01Z").dedupe_key()
    );
    let mut other_sender = received(None, "hello", "2026-11-21T10:00:01Z");
    let EventBody::MessageReceived(m) = &mut other_sender.body else {
        unreachable!()
    };
    m.sender.provider_id = "user-8".into();
    assert_ne!(a.dedupe_key(), other_sender.dedupe_key());
    let mut other_chat = received(None, "hello", "2026-11-21T10:00:01Z");
    let EventBody::MessageReceived(m) = &mut other_chat.body else {
        unreachable!()
    };
    m.conversation.provider_id = "chat-2".into();
    assert_ne!(a.dedupe_key(), other_chat.dedupe_key());
}

#[test]
fn field_boundaries_cannot_be_shifted_to_collide() {
    let mut a = received(Some("2"), "x", "2026-11-21T10:00:00Z");
    let mut b = a.clone();
    let EventBody::MessageReceived(m) = &mut a.body else {
        unreachable!()
    };
    m.conversation.provider_id = "chat-1".into();
    let EventBody::MessageReceived(m) = &mut b.body else {
        unreachable!()
    };
    m.conversation.provider_id = "chat-".into();
    m.provider_message_id = Some("12".into());
    assert_ne!(a.dedupe_key(), b.dedupe_key());
}

#[test]
fn reaction_add_remove_add_are_three_events() {
    let events = one_of_each();
    let add = events
        .iter()
        .find(|e| e.event_type() == EventType::ReactionAdded)
        .unwrap()
        .clone();
    let mut again = add.clone();
    again.occurred_at = ts("2026-11-21T10:05:00Z");
    assert_ne!(add.dedupe_key(), again.dedupe_key());
    let mut redelivered = add.clone();
    redelivered.id = moltbot_protocol::EventId::new();
    assert_eq!(add.dedupe_key(), redelivered.dedupe_key());
}

#[test]
fn websocket_frames_have_the_documented_shape() {
    let frame: ClientFrame = serde_json::from_str(r#"{"op":"subscribe"}"#).unwrap();
    assert_eq!(
        frame,
        ClientFrame::Subscribe {
            conversation_id: None
        }
    );
    let id = ConversationId::new();
    let frame: ClientFrame = serde_json::from_str(&format!(
        r#"{{"op":"unsubscribe","conversation_id":"{id}"}}"#
    ))
    .unwrap();
    assert_eq!(
        frame,
        ClientFrame::Unsubscribe {
            conversation_id: Some(id)
        }
    );
    let json = serde_json::to_value(ServerFrame::Resync { missed: 3 }).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"type": "resync", "data": {"missed": 3}})
    );
}
