//! The DRBD parsers of the `linstor` crate: `drbdsetup events2` lines
//! (`events2::parse_line`) fed into the resource model (`model`), and
//! `drbdsetup status --json` (`status::parse_status`).
//!
//! Input: `[mode: u8][text...]`; mode bit 0 picks `status --json`, otherwise
//! the text is an `events2` stream (lossy UTF-8, as read from the child).
//!
//! Invariants:
//! - no panic, in parsing, in any accessor, or in the model;
//! - a line means the same whatever its whitespace, and an event printed
//!   back as `key:value` tokens parses to the same event (values keep every
//!   `:` after the first);
//! - the model, in all four option combinations, reports a change exactly
//!   when its view changed, with the views before and after; `exists -`
//!   completes the initial state; a destroyed or unknown resource has the
//!   default view; `reset` forgets everything;
//! - `status --json`: whatever parses is a JSON array of that many resources,
//!   and the derived answers agree with the fields.

#![no_main]

use libfuzzer_sys::fuzz_target;
use linstor::events2::{parse_line, EventKind, Line, ObjectKind};
use linstor::model::{ChangeLines, ModelOptions, ResourceModel, ResourceView};
use linstor::status::parse_status;

fn kind_word(k: EventKind) -> &'static str {
    match k {
        EventKind::Exists => "exists",
        EventKind::Create => "create",
        EventKind::Change => "change",
        EventKind::Destroy => "destroy",
    }
}

fn object_word(o: ObjectKind) -> &'static str {
    match o {
        ObjectKind::Resource => "resource",
        ObjectKind::Device => "device",
        ObjectKind::Connection => "connection",
        ObjectKind::PeerDevice => "peer-device",
        ObjectKind::Path => "path",
        ObjectKind::Helper => "helper",
    }
}

fn check_line(text: &str, line: &Line) {
    let normalized = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(&parse_line(&normalized), line, "whitespace changed the meaning of {text:?}");
    let Line::Event(e) = line else {
        return;
    };
    // Typed accessors never panic.
    let _ = (e.name(), e.role(), e.may_promote(), e.promotion_score(), e.force_io_failures());
    let _ = (e.suspended(), e.volume(), e.minor(), e.disk(), e.quorum(), e.client(), e.open());
    let _ = (e.peer_node_id(), e.conn_name(), e.connection(), e.peer_disk());
    if let Some(ts) = &e.timestamp {
        assert!(ts.starts_with(|c: char| c.is_ascii_digit()));
    }
    // A `--diff` value `old->new` keeps `new`; one that still holds `->`
    // would lose more on a second pass, so only print back the others.
    if e.fields.values().any(|v| v.contains("->")) {
        return;
    }
    let mut printed = Vec::new();
    printed.extend(e.timestamp.clone());
    printed.push(kind_word(e.kind).to_owned());
    printed.push(object_word(e.object).to_owned());
    printed.extend(e.fields.iter().map(|(k, v)| format!("{k}:{v}")));
    assert_eq!(&parse_line(&printed.join(" ")), line, "printed back differently: {printed:?}");
}

fn check_model(model: &mut ResourceModel, line: &Line) {
    let before = model.view();
    let change = model.apply(line);
    let after = model.view();
    match change {
        Some(c) => {
            assert_ne!(c.old, c.new, "a change without a difference");
            assert_eq!((c.old, c.new), (before, after.clone()));
        }
        None => assert_eq!(before, after, "the view changed without a report"),
    }
    if *line == Line::EndOfInitialState {
        assert!(after.initial_state_complete);
    }
    if !after.exists {
        let default = ResourceView {
            initial_state_complete: after.initial_state_complete,
            ..ResourceView::default()
        };
        assert_eq!(after, default, "a resource that does not exist has state");
    }
    if after.may_promote_reported {
        assert!(after.exists);
    }
}

fn events2(text: &str) {
    let mut models: Vec<ResourceModel> = Vec::new();
    for raw in text.split('\n') {
        let line = parse_line(raw);
        check_line(raw, &line);
        // Models follow the first resource named in the stream.
        if models.is_empty() {
            if let Line::Event(e) = &line {
                if let Some(name) = e.name() {
                    for change_lines in [ChangeLines::Full, ChangeLines::Plain] {
                        for derive_may_promote in [false, true] {
                            let options = ModelOptions {
                                change_lines,
                                derive_may_promote,
                            };
                            models.push(ResourceModel::new(name, options));
                        }
                    }
                }
            }
        }
        for m in &mut models {
            check_model(m, &line);
        }
    }
    for m in &mut models {
        m.reset();
        assert_eq!(m.view(), ResourceView::default());
    }
}

fn status(text: &str) {
    let Ok(resources) = parse_status(text) else {
        return;
    };
    let value: serde_json::Value = serde_json::from_str(text).expect("parsed status is JSON");
    assert_eq!(value.as_array().map(Vec::len), Some(resources.len()));
    for r in &resources {
        assert_eq!(r.is_local_primary(), r.role == "Primary");
        assert_eq!(r.quorum(), r.devices.iter().all(|d| d.quorum));
        if let Some(c) = r.peer_primary() {
            assert_eq!(c.peer_role, "Primary");
        }
        for d in &r.devices {
            let _ = d.disk();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if mode & 1 == 1 {
        status(&text);
    } else {
        events2(&text);
    }
});
