//! Method parameters, read as the real Bot API server reads them: from the query string and from
//! a JSON or `application/x-www-form-urlencoded` body, every value seen as text (nested objects
//! such as `reply_parameters` arrive JSON-encoded in forms and are re-encoded from JSON bodies),
//! numbers and flags parsed leniently.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::wire::ApiReply;

/// The parameters of one call.
#[derive(Debug, Default)]
pub(super) struct Params {
    /// Each parameter as the text the server works with.
    text: HashMap<String, String>,
    /// The parameters as received, for [`super::Call::params`].
    received: Map<String, Value>,
}

impl Params {
    /// Collects the query string's parameters, then the body's (which win on a clash).
    pub(super) fn parse(
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Params, ApiReply> {
        let mut params = Params::default();
        if let Some(query) = query {
            params.add_form(query.as_bytes());
        }
        if body.is_empty() {
            return Ok(params);
        }
        let content_type = content_type.unwrap_or_default().to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            params.add_json(body)?;
        } else if content_type.starts_with("application/x-www-form-urlencoded") {
            params.add_form(body);
        } else if content_type.starts_with("multipart/form-data") {
            // Only needed for uploads, which this fake does not offer; say so rather than
            // answering as if no parameter had been sent.
            return Err(ApiReply::bad_request(
                "multipart/form-data is not supported by this fake",
            ));
        }
        Ok(params)
    }

    fn add_form(&mut self, form: &[u8]) {
        for (name, value) in form_urlencoded::parse(form) {
            self.received
                .insert(name.to_string(), Value::String(value.to_string()));
            self.text.insert(name.into_owned(), value.into_owned());
        }
    }

    fn add_json(&mut self, body: &[u8]) -> Result<(), ApiReply> {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return Err(ApiReply::bad_request("can't parse JSON object"));
        };
        let Value::Object(object) = value else {
            return Err(ApiReply::bad_request("JSON object expected"));
        };
        for (name, value) in object {
            let text = match &value {
                Value::Null => None,
                Value::String(text) => Some(text.clone()),
                other => Some(other.to_string()),
            };
            if let Some(text) = text {
                self.text.insert(name.clone(), text);
            }
            self.received.insert(name, value);
        }
        Ok(())
    }

    /// A parameter's text; an empty value counts as absent, as on the real server.
    pub(super) fn text(&self, name: &str) -> Option<&str> {
        self.text
            .get(name)
            .map(String::as_str)
            .filter(|text| !text.is_empty())
    }

    /// An integer parameter, read like the real server does: the leading integer of the text,
    /// 0 when there is none ("abc" reads as 0, "12abc" as 12).
    pub(super) fn int(&self, name: &str) -> Option<i64> {
        self.text(name).map(leading_integer)
    }

    /// A boolean parameter: true only for "true" (any case) or "1".
    pub(super) fn flag(&self, name: &str) -> bool {
        self.text(name)
            .is_some_and(|text| text.eq_ignore_ascii_case("true") || text == "1")
    }

    /// A parameter holding JSON, decoded.
    pub(super) fn json(&self, name: &str) -> Option<Result<Value, serde_json::Error>> {
        self.text(name).map(serde_json::from_str)
    }

    /// The parameters as received, as one JSON object.
    pub(super) fn received(&self) -> Value {
        Value::Object(self.received.clone())
    }
}

fn leading_integer(text: &str) -> i64 {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = digits
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0i64, |value, digit| {
            value
                .saturating_mul(10)
                .saturating_add(i64::from(digit - b'0'))
        });
    if negative { -magnitude } else { magnitude }
}
