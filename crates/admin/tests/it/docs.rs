//! `docs/admin-api.md` and the wire types stay in step (the admin API's exact JSON is
//! a contract, see "Admin API contract" in `docs/design.md`, so it is tested):
//!
//! - every type has a `### \`Type\`` table listing exactly the fields it serializes;
//! - every enum has a table listing exactly the names it serializes to;
//! - every example (a fenced block whose info string is `json Type` or `json [Type]`)
//!   deserializes into that type and serializes back to the same JSON — so an example
//!   with a field the type lacks, or without one it has, fails;
//! - the `503` example is the message the server writes for its `detail`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tidegate_admin::server::Answer;
use tidegate_admin::*;

fn docs() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/admin-api.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first-column names (in backticks) of the table under `### \`name\``.
fn table(docs: &str, name: &str) -> BTreeSet<String> {
    let heading = format!("### `{name}`");
    let mut lines = docs.lines().skip_while(|l| l.trim() != heading);
    assert!(
        lines.next().is_some(),
        "docs/admin-api.md has no heading {heading:?}"
    );
    let rows: BTreeSet<String> = lines
        .take_while(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .filter_map(|l| l.split('|').nth(1))
        .filter_map(|cell| cell.trim().strip_prefix('`')?.strip_suffix('`'))
        .map(str::to_owned)
        .collect();
    assert!(!rows.is_empty(), "no table rows under {heading:?}");
    rows
}

/// The field names `value` serializes with.
fn keys(value: &impl Serialize) -> BTreeSet<String> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        other => panic!("not an object: {other:?}"),
    }
}

fn names<T: Serialize>(all: &[T]) -> BTreeSet<String> {
    all.iter()
        .map(|v| match serde_json::to_value(v) {
            Ok(Value::String(s)) => s,
            other => panic!("not a name: {other:?}"),
        })
        .collect()
}

// === a sample of every type (struct literals: a new field does not compile until it
// is added here, and then the docs test asks for it in the docs) ===

fn server_view() -> ServerView {
    ServerView {
        index: 0,
        address: "localhost:6080".into(),
        resolved: Some("127.0.0.1:6080".into()),
        state: ServerState::Ready,
        health: Health::Up,
        health_detail: "up".into(),
        available: true,
        active: 1,
        idle_pooled: 2,
        requests: 3,
        failures: 0,
        on_demand: Some(OnDemandView {
            state: OnDemandState::Ready,
            pid: Some(7),
            uptime_s: Some(1.5),
        }),
    }
}

fn admin_client() -> AdminClientView {
    AdminClientView {
        id: 1,
        peer: "unix".into(),
        age_s: 1.0,
        idle_s: 1.0,
        requests: 1,
        in_request: false,
    }
}

fn admin_eviction() -> AdminEviction {
    AdminEviction {
        id: 1,
        peer: "unix".into(),
        age_s: 1.0,
        idle_s: 1.0,
        requests: 0,
        ago_s: 1.0,
    }
}

fn samples() -> Vec<(&'static str, BTreeSet<String>)> {
    let listener = ListenerView {
        name: "web".into(),
        protocol: "http".into(),
        addresses: vec!["127.0.0.1:8080".into()],
        connections: 1,
        max_connections: 10,
    };
    let certificate = CertificateView {
        listener: "web".into(),
        cert: "/etc/tidegate/certs/a.pem".into(),
        names: vec!["example.com".into(), "*.example.com".into()],
        issuer: "CN=Example CA".into(),
        not_after: 1_800_000_000,
        expires_in_s: 3_600,
    };
    let upstream_side = UpstreamSide {
        name: "app".into(),
        server: "localhost:6080".into(),
        local: None,
        peer: None,
    };
    vec![
        (
            "Status",
            keys(&Status {
                version: "0.1.0".into(),
                pid: 1,
                uptime_s: 1.0,
                state: ProcessState::Running,
                config: "<quickstart>".into(),
                connections: 1,
                listeners: vec![listener.clone()],
                certificates: vec![certificate.clone()],
            }),
        ),
        ("ListenerView", keys(&listener)),
        ("CertificateView", keys(&certificate)),
        (
            "UpstreamView",
            keys(&UpstreamView {
                name: "app".into(),
                balance: "round_robin".into(),
                servers: vec![server_view()],
                panic: false,
                panic_requests: 0,
            }),
        ),
        ("ServerView", keys(&server_view())),
        (
            "OnDemandView",
            keys(&OnDemandView {
                state: OnDemandState::Stopped,
                pid: None,
                uptime_s: None,
            }),
        ),
        (
            "SetState",
            keys(&SetState {
                state: ServerState::Drain,
            }),
        ),
        (
            "ConnectionView",
            keys(&ConnectionView {
                id: 1,
                side: ConnSide::Client,
                listener: "web".into(),
                protocol: ConnProtocol::Http1,
                peer: "unix".into(),
                local: "unix:/x.sock".into(),
                state: ConnState::Idle,
                age_s: 1.0,
                idle_s: 1.0,
                bytes_in: 1,
                bytes_out: 1,
                requests: 1,
                generation: 1,
                upstream: Some(upstream_side.clone()),
                parent: Some(1),
            }),
        ),
        ("UpstreamSide", keys(&upstream_side)),
        ("Closed", keys(&Closed { closed: 1 })),
        ("AdminClientView", keys(&admin_client())),
        (
            "AdminClients",
            keys(&AdminClients {
                clients: vec![admin_client()],
                evictions: 1,
                recent_evictions: vec![admin_eviction()],
            }),
        ),
        ("AdminEviction", keys(&admin_eviction())),
        (
            "ReloadView",
            keys(&ReloadView {
                applied: true,
                generation: 2,
                changes: vec![reload_change()],
                message: "ok".into(),
            }),
        ),
        ("ReloadChange", keys(&reload_change())),
        (
            "UpgradeView",
            keys(&UpgradeView {
                old_pid: 1,
                new_pid: 2,
                message: "ok".into(),
            }),
        ),
        (
            "ErrorBody",
            keys(&ErrorBody {
                error: "x".into(),
                detail: Some(Value::Null),
            }),
        ),
        (
            "AdminBusy",
            keys(&AdminBusy {
                clients: 1,
                max_connections: 1,
                oldest_age_s: 1.0,
                oldest_idle_s: 1.0,
                idle_timeout_s: 1.0,
            }),
        ),
    ]
}

/// Every variant of every enum; the `match`es make a new variant a compile error here.
fn enums() -> Vec<(&'static str, BTreeSet<String>)> {
    use ConnProtocol as P;
    use ConnState as C;
    use OnDemandState as O;
    let process = [ProcessState::Running, ProcessState::Draining];
    for v in process {
        match v {
            ProcessState::Running | ProcessState::Draining => {}
        }
    }
    let server = [ServerState::Ready, ServerState::Drain, ServerState::Maint];
    for v in server {
        match v {
            ServerState::Ready | ServerState::Drain | ServerState::Maint => {}
        }
    }
    let health = [Health::Up, Health::Down, Health::Unknown];
    for v in health {
        match v {
            Health::Up | Health::Down | Health::Unknown => {}
        }
    }
    let side = [ConnSide::Client, ConnSide::Upstream];
    for v in side {
        match v {
            ConnSide::Client | ConnSide::Upstream => {}
        }
    }
    let protocol = [P::Http1, P::H2, P::Sse, P::Websocket, P::Tcp];
    for v in protocol {
        match v {
            P::Http1 | P::H2 | P::Sse | P::Websocket | P::Tcp => {}
        }
    }
    let state = [
        C::Reading,
        C::WaitingUpstream,
        C::Streaming,
        C::Tunnel,
        C::Idle,
        C::Closing,
    ];
    for v in state {
        match v {
            C::Reading | C::WaitingUpstream | C::Streaming | C::Tunnel | C::Idle | C::Closing => {}
        }
    }
    let on_demand = [O::Stopped, O::Starting, O::Ready, O::Stopping, O::Failed];
    for v in on_demand {
        match v {
            O::Stopped | O::Starting | O::Ready | O::Stopping | O::Failed => {}
        }
    }
    vec![
        ("ProcessState", names(&process)),
        ("ServerState", names(&server)),
        ("Health", names(&health)),
        ("ConnSide", names(&side)),
        ("ConnProtocol", names(&protocol)),
        ("ConnState", names(&state)),
        ("OnDemandState", names(&on_demand)),
    ]
}

#[test]
fn every_type_has_a_table_with_exactly_its_fields() {
    let docs = docs();
    for (name, fields) in samples() {
        assert_eq!(
            table(&docs, name),
            fields,
            "the table of `{name}` in docs/admin-api.md (left) and the fields it serializes (right)"
        );
    }
}

#[test]
fn every_enum_has_a_table_with_exactly_its_names() {
    let docs = docs();
    for (name, variants) in enums() {
        assert_eq!(
            table(&docs, name),
            variants,
            "the names of `{name}` in docs/admin-api.md (left) and in the code (right)"
        );
    }
    // The vocabulary of states (`docs/design.md`, "Vocabulary of states"), spelled out
    // once more so that a rename is a decision.
    let expected = [
        ("ServerState", "ready drain maint"),
        ("Health", "up down unknown"),
        ("OnDemandState", "stopped starting ready stopping failed"),
        ("ConnProtocol", "http1 h2 sse websocket tcp"),
        (
            "ConnState",
            "reading waiting_upstream streaming tunnel idle closing",
        ),
        ("ProcessState", "running draining"),
    ];
    for (name, words) in expected {
        let (_, got) = enums()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no enum {name}"));
        let words: BTreeSet<String> = words.split(' ').map(str::to_owned).collect();
        assert_eq!(got, words, "{name}");
    }
}

/// Every `json Type` block: (type, JSON).
fn examples(docs: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut lines = docs.lines();
    while let Some(line) = lines.next() {
        let Some(ty) = line.strip_prefix("```json ") else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        let text = body.join("\n");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the `{ty}` example is not JSON: {e}\n{text}"));
        out.push((ty.trim().to_owned(), value));
    }
    out
}

/// Deserializes `value` as `T` and back; the JSON must come out the same.
#[allow(
    clippy::expect_used,
    reason = "a test helper: a failure here fails the test, which is what it should do"
)]
fn round_trip<T: Serialize + DeserializeOwned>(ty: &str, value: &Value) {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("the `{ty}` example does not fit the type: {e}\n{value:#}"));
    let back = serde_json::to_value(&typed).expect("serializes");
    assert_eq!(
        &back, value,
        "the `{ty}` example (right) has fields or values the type does not write the same way (left)"
    );
}

#[test]
fn every_example_is_exactly_a_value_of_its_type() {
    let docs = docs();
    let examples = examples(&docs);
    for (ty, value) in &examples {
        match ty.as_str() {
            "Status" => round_trip::<Status>(ty, value),
            "[UpstreamView]" => round_trip::<Vec<UpstreamView>>(ty, value),
            "ServerView" => round_trip::<ServerView>(ty, value),
            "SetState" => round_trip::<SetState>(ty, value),
            "[ConnectionView]" => round_trip::<Vec<ConnectionView>>(ty, value),
            "Closed" => round_trip::<Closed>(ty, value),
            "AdminClients" => round_trip::<AdminClients>(ty, value),
            "ReloadView" => round_trip::<ReloadView>(ty, value),
            "UpgradeView" => round_trip::<UpgradeView>(ty, value),
            "ErrorBody" => round_trip::<ErrorBody>(ty, value),
            other => panic!("an example of unknown type `{other}`"),
        }
    }
    // Every answer of an endpoint has an example.
    for ty in [
        "Status",
        "[UpstreamView]",
        "ServerView",
        "SetState",
        "[ConnectionView]",
        "Closed",
        "AdminClients",
        "ReloadView",
        "UpgradeView",
        "ErrorBody",
    ] {
        assert!(
            examples.iter().any(|(t, _)| t == ty),
            "no `json {ty}` example in docs/admin-api.md"
        );
    }
}

#[test]
fn the_busy_example_is_what_the_server_writes() {
    let docs = docs();
    let busy = examples(&docs)
        .into_iter()
        .filter(|(ty, _)| ty == "ErrorBody")
        .find(|(_, v)| {
            v["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("admin API busy"))
        })
        .map(|(_, v)| v)
        .expect("a `json ErrorBody` example of the 503");
    let detail: AdminBusy = serde_json::from_value(busy["detail"].clone())
        .expect("the 503 example's detail is an AdminBusy");
    round_trip::<AdminBusy>("AdminBusy", &busy["detail"]);
    let answer = Answer::busy(&detail);
    assert_eq!(answer.status, 503);
    let written: Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(
        written, busy,
        "the server writes (left), the docs show (right)"
    );
}

fn reload_change() -> tidegate_admin::ReloadChange {
    tidegate_admin::ReloadChange {
        subject: "listener web".into(),
        what: "added".into(),
        connections: 0,
        effect: "binds".into(),
    }
}
