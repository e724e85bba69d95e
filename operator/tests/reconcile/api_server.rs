//! A fake API server behind a tower-test mock: it keeps objects by path, answers GET,
//! LIST and WATCH, server-side apply, merge and JSON patches, DELETE and event POSTs as
//! the real one would for these tests, and records every request for the tests to assert.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock;

type Reply = Response<BoxBody<Bytes, Infallible>>;

/// One request the operator made.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
}

impl Seen {
    /// `METHOD path`, what most assertions compare.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// A server-side apply by the operator, taking over conflicts.
    pub fn is_operator_apply(&self) -> bool {
        self.method == "PATCH"
            && self.content_type == "application/apply-patch+yaml"
            && self.query.get("fieldManager").map(String::as_str) == Some("moltbot-operator")
            && self.query.get("force").map(String::as_str) == Some("true")
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    seen: Vec<Seen>,
    /// Paths whose writes are refused with 403.
    forbidden: Vec<String>,
    version: u64,
    /// Open watches: the collection path each serves, and where its events go.
    watches: Vec<(String, mpsc::UnboundedSender<Bytes>)>,
}

#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
}

impl ApiServer {
    /// A client talking to a new fake server.
    pub fn start() -> (Client, ApiServer) {
        let (service, mut handle) = mock::pair::<Request<Body>, Reply>();
        let server = ApiServer {
            state: Arc::default(),
        };
        let state = server.state.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("a request body");
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("a JSON request body")
                };
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().map(form_pairs).unwrap_or_default(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    body,
                };
                let is_watch = seen.query.get("watch").map(String::as_str) == Some("true");
                let body = if is_watch {
                    let (events, receiver) = mpsc::unbounded_channel();
                    state.lock().unwrap().watch(&seen, events);
                    let frames = futures_util::stream::unfold(receiver, |mut receiver| async {
                        let line = receiver.recv().await?;
                        Some((Ok(Frame::data(line)), receiver))
                    });
                    Response::new(StreamBody::new(frames).boxed())
                } else {
                    let (status, reply) = state.lock().unwrap().answer(&seen);
                    let bytes = Bytes::from(serde_json::to_vec(&reply).unwrap());
                    let mut response = Response::new(Full::new(bytes).boxed());
                    *response.status_mut() = status;
                    response
                };
                let mut body = body;
                body.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                respond.send_response(body);
            }
        });
        (Client::new(service, "default"), server)
    }

    /// Stores `object` at `path`, as if it existed (or someone changed it).
    pub fn put(&self, path: &str, object: impl serde::Serialize) {
        let mut state = self.state.lock().unwrap();
        let mut object = serde_json::to_value(object).unwrap();
        state.stamp(&mut object);
        state.store(path, object);
    }

    /// Requests so far, without taking them.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The object at `path`, if any.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Writes to `path` will be refused with 403.
    pub fn forbid(&self, path: &str) {
        self.state.lock().unwrap().forbidden.push(path.to_string());
    }

    /// Writes are accepted again.
    pub fn forbid_nothing(&self) {
        self.state.lock().unwrap().forbidden.clear();
    }

    /// Every request since the last call.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut self.state.lock().unwrap().seen)
    }
}

fn form_pairs(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// The collection paths that list `object_path`: its own, and the all-namespaces one.
fn collections(object_path: &str) -> [String; 2] {
    let parent = object_path
        .rsplit_once('/')
        .map_or("", |(parent, _)| parent);
    let segments: Vec<&str> = parent.split('/').collect();
    let across = match segments.iter().position(|s| *s == "namespaces") {
        Some(i) if i + 2 < segments.len() => {
            [&segments[..i], &segments[i + 2..]].concat().join("/")
        }
        _ => parent.to_string(),
    };
    [parent.to_string(), across]
}

impl State {
    fn stamp(&mut self, object: &mut Value) {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
    }

    /// Stores a written object as the API server does: a write that changes nothing
    /// keeps the resourceVersion and tells no watch.
    fn write(&mut self, path: &str, mut object: Value) -> (StatusCode, Value) {
        if let Some(old) = self.objects.get(path) {
            let mut same = object.clone();
            same["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            if same == *old {
                return (StatusCode::OK, old.clone());
            }
        }
        self.stamp(&mut object);
        self.store(path, object.clone());
        (StatusCode::OK, object)
    }

    /// Keeps `object` at `path` and tells the watches of its collection.
    fn store(&mut self, path: &str, object: Value) {
        let kind = if self.objects.contains_key(path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.notify(path, kind, &object);
        self.objects.insert(path.to_string(), object);
    }

    fn notify(&mut self, path: &str, kind: &str, object: &Value) {
        let collections = collections(path);
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
        line.push(b'\n');
        let line = Bytes::from(line);
        self.watches.retain(|(collection, events)| {
            !collections.contains(collection) || events.send(line.clone()).is_ok()
        });
    }

    /// Starts a watch of the collection at `seen.path`: it only hears of changes from now.
    fn watch(&mut self, seen: &Seen, events: mpsc::UnboundedSender<Bytes>) {
        self.seen.push(seen.clone());
        self.watches.push((seen.path.clone(), events));
    }

    fn list(&self, path: &str) -> Value {
        let items: Vec<&Value> = self
            .objects
            .iter()
            .filter(|(object_path, _)| collections(object_path).iter().any(|c| c == path))
            .map(|(_, object)| object)
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": self.version.to_string()},
            "items": items,
        })
    }

    fn answer(&mut self, seen: &Seen) -> (StatusCode, Value) {
        self.seen.push(seen.clone());
        if seen.method != "GET" && self.forbidden.contains(&seen.path) {
            return status(StatusCode::FORBIDDEN, "Forbidden");
        }
        let path = seen.path.as_str();
        match (seen.method.as_str(), seen.content_type.as_str()) {
            ("GET", _) => match self.objects.get(path) {
                Some(object) => (StatusCode::OK, object.clone()),
                None if is_collection(path) => (StatusCode::OK, self.list(path)),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            ("POST", _) if path.ends_with("/events") => (StatusCode::CREATED, seen.body.clone()),
            ("POST", _) => {
                let name = seen.body["metadata"]["name"].as_str().unwrap_or_default();
                let object_path = format!("{path}/{name}");
                if self.objects.contains_key(&object_path) {
                    return status(StatusCode::CONFLICT, "AlreadyExists");
                }
                let (_, object) = self.write(&object_path, seen.body.clone());
                (StatusCode::CREATED, object)
            }
            ("DELETE", _) => match self.objects.remove(path) {
                Some(object) => {
                    self.notify(path, "DELETED", &object);
                    (StatusCode::OK, object)
                }
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            ("PATCH", "application/apply-patch+yaml") => {
                if let Some(owner) = path.strip_suffix("/status") {
                    let Some(mut object) = self.objects.get(owner).cloned() else {
                        return status(StatusCode::NOT_FOUND, "NotFound");
                    };
                    object["status"] = seen.body["status"].clone();
                    return self.write(owner, object);
                }
                let mut object = seen.body.clone();
                // The main resource's apply leaves the status subresource alone.
                if let Some(old_status) = self.objects.get(path).and_then(|o| o.get("status")) {
                    object["status"] = old_status.clone();
                }
                self.write(path, object)
            }
            // Strategic merge is a merge patch for the maps the operator's Lease has.
            (
                "PATCH",
                "application/merge-patch+json" | "application/strategic-merge-patch+json",
            ) => {
                let Some(mut object) = self.objects.get(path).cloned() else {
                    return status(StatusCode::NOT_FOUND, "NotFound");
                };
                merge(&mut object, &seen.body);
                self.write(path, object)
            }
            ("PATCH", "application/json-patch+json") => {
                let Some(mut object) = self.objects.get(path).cloned() else {
                    return status(StatusCode::NOT_FOUND, "NotFound");
                };
                json_patch_finalizers(&mut object, &seen.body);
                self.write(path, object)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

/// Whether `path` names a collection the operator lists or watches.
fn is_collection(path: &str) -> bool {
    matches!(
        path.rsplit('/').next(),
        Some("tenants" | "connections" | "statefulsets" | "leases")
    )
}

fn status(code: StatusCode, reason: &str) -> (StatusCode, Value) {
    (
        code,
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": reason,
            "message": reason,
            "code": code.as_u16(),
        }),
    )
}

/// RFC 7386 merge.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// The two JSON patches kube's finalizer helper sends: add the finalizer list (or one
/// entry), or remove one entry. `test` operations are taken as passing.
fn json_patch_finalizers(object: &mut Value, operations: &Value) {
    for operation in operations.as_array().expect("a JSON patch is a list") {
        let path = operation["path"].as_str().unwrap_or_default();
        let finalizers = &mut object["metadata"]["finalizers"];
        match (operation["op"].as_str(), path) {
            (Some("add"), "/metadata/finalizers") => *finalizers = operation["value"].clone(),
            (Some("add"), "/metadata/finalizers/-") => finalizers
                .as_array_mut()
                .expect("finalizers")
                .push(operation["value"].clone()),
            (Some("remove"), index) => {
                let index: usize = index
                    .trim_start_matches("/metadata/finalizers/")
                    .parse()
                    .expect("a finalizer index");
                finalizers.as_array_mut().expect("finalizers").remove(index);
            }
            (Some("test"), _) => {}
            other => panic!("unexpected JSON patch operation {other:?}"),
        }
    }
}
