//! `linstor::rest` against the official OpenAPI spec and a local stand-in of
//! the LINSTOR controller (a std TcpListener thread on 127.0.0.1 that records
//! requests, keeps created objects in memory and answers spec-shaped replies).
//!
//! Stops short of a real controller: no LINSTOR runs on these machines. The
//! stand-in's replies are themselves validated against the spec's response
//! schemas, and every body the client sends against the request schema of its
//! operation (with unknown fields rejected).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};

use linstor::rest::cli::{run_with_output, EXIT_DIFFERS, EXIT_FAILED, EXIT_OK};
use linstor::rest::provision::{HeartbeatVolumeSpec, PromotionMode};
use linstor::rest::retcode::*;
use linstor::rest::types::{
    ApiCallRc, AutoPlaceRequest, Node, Resource, ResourceDefinition, ResourceGroup,
    ResourceGroupSpawn, VolumeGroup,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// The OpenAPI spec, turned into JSON schemas

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/reference/linstor-rest-v1-openapi.yaml"
        );
        let text = std::fs::read_to_string(path).expect("read the LINSTOR OpenAPI spec");
        serde_norway::from_str(&text).expect("parse the LINSTOR OpenAPI spec")
    })
}

/// Rewrite `#/components/schemas/X` to `#/definitions/X`; with `strict`, every
/// object schema that lists properties rejects others (so a misspelt or
/// invented field fails), except branches of an `allOf`. Without `strict`,
/// `oneOf` reads as `anyOf`: the spec's `oneOf`s list schemas whose fields are
/// all optional, so a real object matches several of them.
fn rewrite(v: &Value, strict: bool, in_all_of: bool) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                let key = if k == "oneOf" && !strict {
                    "anyOf"
                } else {
                    k.as_str()
                };
                let child = if k == "allOf" {
                    match x {
                        Value::Array(items) => {
                            Value::Array(items.iter().map(|i| rewrite(i, strict, true)).collect())
                        }
                        other => rewrite(other, strict, false),
                    }
                } else if k == "$ref" {
                    Value::String(
                        x.as_str()
                            .unwrap()
                            .replace("#/components/schemas/", "#/definitions/"),
                    )
                } else {
                    rewrite(x, strict, false)
                };
                out.insert(key.to_string(), child);
            }
            if strict
                && !in_all_of
                && out.contains_key("properties")
                && !out.contains_key("additionalProperties")
            {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| rewrite(x, strict, in_all_of)).collect()),
        other => other.clone(),
    }
}

fn json_schema(schema: &Value, strict: bool) -> Value {
    let defs = rewrite(&spec()["components"]["schemas"], strict, false);
    json!({
        "definitions": defs,
        "allOf": [rewrite(schema, strict, false)],
    })
}

fn operation(method: &str, path: &str) -> &'static Value {
    let op = &spec()["paths"][path][method];
    assert!(op.is_object(), "spec has no {method} {path}");
    op
}

fn request_schema(method: &str, path: &str) -> Value {
    let op = operation(method, path);
    json_schema(
        &op["requestBody"]["content"]["application/json"]["schema"],
        true,
    )
}

fn response_schema(method: &str, path: &str, status: u16) -> Value {
    let op = operation(method, path);
    let mut r = &op["responses"][status.to_string()];
    assert!(
        r.is_object(),
        "spec has no {status} reply for {method} {path}"
    );
    if let Some(reference) = r.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap();
        r = &spec()["components"]["responses"][name];
    }
    json_schema(&r["content"]["application/json"]["schema"], false)
}

fn errors_of(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::draft4::new(schema).expect("schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Which spec path template a concrete request path matches.
fn template_of(path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let paths = spec()["paths"].as_object().unwrap();
    let literal = |k: &str| k.split('/').filter(|s| !s.starts_with('{')).count();
    let mut best: Option<&'static str> = None;
    for key in paths.keys() {
        let t: Vec<&str> = key.trim_start_matches('/').split('/').collect();
        let matches = t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s);
        // Prefer the template with the most literal segments.
        if matches && best.is_none_or(|b| literal(key) > literal(b)) {
            best = Some(key.as_str());
        }
    }
    best.unwrap_or_else(|| panic!("no spec path for {path}"))
}

// ---------------------------------------------------------------------------
// Instances synthesised from response schemas (every property, the spec's
// `example` where it has one)

fn resolve(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(&spec()["components"]["schemas"][r.rsplit('/').next().unwrap()]),
        None => v,
    }
}

/// An error ret_code (FAIL_EXISTS_RSC_DFN | MASK_RSC_DFN | MASK_CRT | MASK_ERROR)
/// stands in for every int64, so ret_code decodes as a negative error.
const INT64_SAMPLE: i64 = -4611686018406940171;

fn synthesize(schema: &Value, depth: usize) -> Value {
    let s = resolve(schema);
    if let Some(ex) = s.get("example") {
        if s.get("properties").is_none() {
            return ex.clone();
        }
    }
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        let mut merged = serde_json::Map::new();
        for part in all {
            if let Value::Object(m) = synthesize(part, depth) {
                merged.extend(m);
            }
        }
        return Value::Object(merged);
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        return synthesize(&one[0], depth);
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return e[0].clone();
    }
    match s.get("type").and_then(Value::as_str) {
        Some("string") if s["format"] == "date-time" => json!("2024-05-01T12:00:00Z"),
        Some("string") => json!("text"),
        Some("integer") if s["format"] == "int32" => json!(7),
        Some("integer") => json!(INT64_SAMPLE),
        Some("number") => json!(1.5),
        Some("boolean") => json!(true),
        Some("array") if depth == 0 => json!([]),
        Some("array") => json!([synthesize(&s["items"], depth - 1)]),
        _ => {
            let mut m = serde_json::Map::new();
            if depth > 0 {
                if let Some(props) = s.get("properties").and_then(Value::as_object) {
                    for (k, p) in props {
                        m.insert(k.clone(), synthesize(p, depth - 1));
                    }
                }
                if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                    m.insert("key".into(), synthesize(ap, depth - 1));
                }
            }
            Value::Object(m)
        }
    }
}

#[test]
fn synthesised_replies_of_every_operation_used_decode_into_our_types() {
    let cases = [
        "/v1/resource-groups",
        "/v1/resource-groups/{resource_group}/volume-groups",
        "/v1/resource-definitions",
        "/v1/view/resources",
        "/v1/nodes",
        "/v1/resource-definitions/{resource}/resources",
    ];
    for path in cases {
        let schema =
            &operation("get", path)["responses"]["200"]["content"]["application/json"]["schema"];
        let instance = synthesize(schema, 8);
        let errs = errors_of(&json_schema(schema, false), &instance);
        assert!(
            errs.is_empty(),
            "synthesised {path} reply is not valid: {errs:?}"
        );
        assert!(instance.as_array().is_some_and(|a| !a.is_empty()));
        let text = instance.to_string();
        match path {
            "/v1/resource-groups" => {
                let rgs: Vec<ResourceGroup> = serde_json::from_str(&text).unwrap();
                assert_eq!(rgs[0].name, "rscgrp1");
            }
            "/v1/resource-groups/{resource_group}/volume-groups" => {
                let vgs: Vec<VolumeGroup> = serde_json::from_str(&text).unwrap();
                assert_eq!(vgs[0].volume_number, Some(7));
            }
            "/v1/resource-definitions" => {
                let rds: Vec<ResourceDefinition> = serde_json::from_str(&text).unwrap();
                assert_eq!(rds[0].volume_definitions.len(), 1);
            }
            "/v1/nodes" => {
                let nodes: Vec<Node> = serde_json::from_str(&text).unwrap();
                assert_eq!(nodes[0].net_interfaces[0].address, "10.0.0.2");
            }
            _ => {
                let r: Vec<Resource> = serde_json::from_str(&text).unwrap();
                let drbd = r[0].layer_object.as_ref().unwrap().drbd.as_ref().unwrap();
                assert_eq!(drbd.may_promote, Some(true));
                assert_eq!(r[0].node_name, "nodeA");
            }
        }
    }
    // Replies of modifying calls: ApiCallRcList and (on 500) one ApiCallRc.
    for name in ["ApiCallRcList", "ApiCallRc"] {
        let instance = synthesize(&spec()["components"]["schemas"][name], 4);
        let one = if name == "ApiCallRc" {
            instance.clone()
        } else {
            instance[0].clone()
        };
        let rc: ApiCallRc = serde_json::from_value(one).unwrap();
        assert_eq!(rc.message, "Operation result.");
        assert!(rc.rc().is_error_code(FAIL_EXISTS_RSC_DFN));
    }
}

fn request_example(path: &str) -> Value {
    operation("post", path)["requestBody"]["content"]["application/json"]["example"].clone()
}

#[test]
fn spec_examples_decode_into_our_types() {
    let node: Node = serde_json::from_value(request_example("/v1/nodes")).unwrap();
    assert_eq!(node.name, "nodeA");
    assert_eq!(node.net_interfaces[0].address, "10.0.0.2");
    assert_eq!(node.net_interfaces[0].is_active, Some(true));

    let rg: ResourceGroup = serde_json::from_value(request_example("/v1/resource-groups")).unwrap();
    assert_eq!(rg.name, "rscgrp1");

    let spawn: ResourceGroupSpawn = serde_json::from_value(request_example(
        "/v1/resource-groups/{resource_group}/spawn",
    ))
    .unwrap();
    assert_eq!(spawn.volume_sizes, [1048576, 20971520]);

    let ap: AutoPlaceRequest = serde_json::from_value(request_example(
        "/v1/resource-definitions/{resource}/autoplace",
    ))
    .unwrap();
    assert_eq!(ap.select_filter.place_count, Some(2));
}

fn all_spec_variants() -> Vec<HeartbeatVolumeSpec> {
    let base = HeartbeatVolumeSpec::new("xcp-persistent-ha-statefile", 4 << 20);
    let mut pool = base.clone();
    pool.storage_pool = Some("xcp-sr-linstor_group_thin_device".into());
    let mut yes = HeartbeatVolumeSpec::new("xcp-persistent-redo-log", 256 << 20);
    yes.promotion = PromotionMode::OpenToPromote {
        timeout_deciseconds: 600,
    };
    yes.place_count = 2;
    vec![base, pool, yes]
}

#[test]
fn request_bodies_validate_against_their_operation_schema() {
    for spec in all_spec_variants() {
        let bodies = [
            (
                "/v1/resource-groups",
                serde_json::to_value(spec.resource_group_body()).unwrap(),
            ),
            (
                "/v1/resource-groups/{resource_group}/volume-groups",
                serde_json::to_value(spec.volume_group_body()).unwrap(),
            ),
            (
                "/v1/resource-groups/{resource_group}/spawn",
                serde_json::to_value(spec.spawn_body()).unwrap(),
            ),
            (
                "/v1/resource-definitions/{resource}/autoplace",
                serde_json::to_value(spec.autoplace_body()).unwrap(),
            ),
        ];
        for (path, body) in bodies {
            let errs = errors_of(&request_schema("post", path), &body);
            assert!(errs.is_empty(), "POST {path} body {body} invalid: {errs:?}");
        }
    }
    // The strict schemas do catch a wrong field name or type.
    let schema = request_schema("post", "/v1/resource-groups");
    for bad in [
        json!({"name": "x", "selectfilter": {}}),
        json!({"name": "x", "select_filter": {"place_count": "3"}}),
        json!({"name": "x", "select_filter": {"placecount": 3}}),
        json!({"name": "x", "props": {"a": 1}}),
    ] {
        assert!(!errors_of(&schema, &bad).is_empty(), "{bad} passed");
    }
}

// ---------------------------------------------------------------------------
// The controller stand-in

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    status: u16,
    reply: Value,
}

#[derive(Default)]
struct State {
    rgs: Vec<Value>,
    vgs: BTreeMap<String, Vec<Value>>,
    rds: Vec<Value>,
    resources: Vec<Value>,
    nodes: Vec<Value>,
    /// node name -> storage pools
    pools: BTreeMap<String, Vec<String>>,
    /// Answer the next resource-group list with nothing (a concurrent run
    /// creates the group between our GET and POST).
    hide_rgs_once: bool,
    log: Vec<Recorded>,
}

struct Controller {
    url: String,
    state: Arc<Mutex<State>>,
}

fn uuid(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn rc(severity: u64, object: u64, op: u64, code: u64, message: &str) -> Value {
    json!({"ret_code": RetCode::compose(severity, object, op, code), "message": message})
}

fn decode_pct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

type Pools = BTreeMap<String, Vec<String>>;

fn nodes_fixture() -> (Vec<Value>, Pools) {
    let node = |name: &str, nics: Value| {
        json!({"name": name, "type": "Satellite", "net_interfaces": nics,
               "connection_status": "ONLINE", "uuid": uuid(name.len())})
    };
    let nodes = vec![
        node(
            "host-c",
            json!([{"name": "default", "address": "10.0.0.13", "satellite_port": 3366, "is_active": true}]),
        ),
        node(
            "host-a",
            json!([
                {"name": "storage", "address": "192.168.5.11", "is_active": false},
                {"name": "default", "address": "10.0.0.11", "satellite_port": 3366, "is_active": true}]),
        ),
        node(
            "host-b",
            json!([{"name": "default", "address": "fd00::12", "satellite_port": 3366, "is_active": true}]),
        ),
        node(
            "host-d",
            json!([{"name": "default", "address": "10.0.0.14", "satellite_port": 3366, "is_active": true}]),
        ),
    ];
    let mut pools = BTreeMap::new();
    for n in ["host-a", "host-b", "host-c", "host-d"] {
        pools.insert(n.to_string(), vec!["DfltStorPool".into(), "ha-pool".into()]);
    }
    (nodes, pools)
}

impl Controller {
    fn start() -> Self {
        let (nodes, pools) = nodes_fixture();
        let state = Arc::new(Mutex::new(State {
            nodes,
            pools,
            ..State::default()
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Controller { url, state }
    }

    fn log(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// Run the CLI function with `--controller` pointing here.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut full = vec!["heartbeat-linstor", args[0], "--controller", &self.url];
        full.extend_from_slice(&args[1..]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with_output(full, &mut out, &mut err).expect("cli runs");
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
                assert!(
                    !k.eq_ignore_ascii_case("transfer-encoding"),
                    "expected a sized body"
                );
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let query: Vec<(String, String)> = query
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (decode_pct(k), decode_pct(v))
            })
            .collect();
        let body: Option<Value> =
            (len > 0).then(|| serde_json::from_slice(&body).expect("request body is JSON"));
        let mut st = state.lock().unwrap();
        let (status, reply) = route(&mut st, &method, &path, &query, body.as_ref());
        st.log.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query,
            body,
            status,
            reply: reply.clone(),
        });
        drop(st);
        let text = reply.to_string();
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            text.len()
        );
        if conn.write_all(head.as_bytes()).is_err() || conn.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn filter_by(items: &[Value], key: &str, query: &[(String, String)], qname: &str) -> Vec<Value> {
    let wanted: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == qname)
        .map(|(_, v)| v.to_lowercase())
        .collect();
    items
        .iter()
        .filter(|i| wanted.is_empty() || wanted.contains(&i[key].as_str().unwrap().to_lowercase()))
        .cloned()
        .collect()
}

fn is_diskless(r: &Value) -> bool {
    r["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "DISKLESS")
}

fn route(
    st: &mut State,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: Option<&Value>,
) -> (u16, Value) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let created = |obj, msg: String| (201, json!([rc(0, obj, MASK_CRT, CREATED, &msg)]));
    match (method, segs.as_slice()) {
        ("GET", ["v1", "resource-groups"]) => {
            if std::mem::take(&mut st.hide_rgs_once) {
                return (200, json!([]));
            }
            let rgs = filter_by(&st.rgs, "name", query, "resource_groups");
            (200, Value::Array(rgs))
        }
        ("POST", ["v1", "resource-groups"]) => {
            let mut rg = body.unwrap().clone();
            let name = rg["name"].as_str().unwrap().to_string();
            if st
                .rgs
                .iter()
                .any(|g| g["name"].as_str().unwrap().eq_ignore_ascii_case(&name))
            {
                let msg = format!("A resource group with the name '{name}' already exists.");
                let mut e = rc(
                    MASK_ERROR,
                    MASK_RSC_GRP,
                    MASK_CRT,
                    FAIL_EXISTS_RSC_GRP,
                    &msg,
                );
                e["obj_refs"] = json!({"RscGrp": name});
                return (400, json!([e]));
            }
            // LINSTOR answers a `storage_pool` as `storage_pool_list`.
            if let Some(sp) = rg["select_filter"].get("storage_pool").cloned() {
                let filter = rg["select_filter"].as_object_mut().unwrap();
                filter.remove("storage_pool");
                filter.insert("storage_pool_list".into(), json!([sp]));
            }
            rg["uuid"] = json!(uuid(st.rgs.len() + 100));
            st.rgs.push(rg);
            created(
                MASK_RSC_GRP,
                format!("New resource group '{name}' created."),
            )
        }
        ("GET", ["v1", "resource-groups", rg, "volume-groups"]) => (
            200,
            Value::Array(st.vgs.get(*rg).cloned().unwrap_or_default()),
        ),
        ("POST", ["v1", "resource-groups", rg, "volume-groups"]) => {
            let mut vg = body.unwrap().clone();
            let vgs = st.vgs.entry(rg.to_string()).or_default();
            let nr = vg["volume_number"].as_i64().unwrap_or(vgs.len() as i64);
            if vgs.iter().any(|v| v["volume_number"] == nr) {
                let e = rc(
                    MASK_ERROR,
                    MASK_VLM_GRP,
                    MASK_CRT,
                    FAIL_EXISTS_VLM_GRP,
                    "exists",
                );
                return (400, json!([e]));
            }
            vg["volume_number"] = json!(nr);
            vg["uuid"] = json!(uuid(200 + nr as usize));
            vgs.push(vg);
            created(
                MASK_VLM_GRP,
                format!("New volume group {nr} of '{rg}' created."),
            )
        }
        ("POST", ["v1", "resource-groups", rg, "spawn"]) => {
            let b = body.unwrap();
            let Some(group) = st.rgs.iter().find(|g| g["name"] == *rg).cloned() else {
                let e = rc(
                    MASK_ERROR,
                    MASK_RSC_GRP,
                    MASK_CRT,
                    FAIL_NOT_FOUND_RSC_GRP,
                    "no rg",
                );
                return (400, json!([e]));
            };
            let name = b["resource_definition_name"].as_str().unwrap().to_string();
            if st.rds.iter().any(|d| d["name"] == name.as_str()) {
                let e = rc(
                    MASK_ERROR,
                    MASK_RSC_DFN,
                    MASK_CRT,
                    FAIL_EXISTS_RSC_DFN,
                    "exists",
                );
                return (400, json!([e]));
            }
            let vds: Vec<Value> = b["volume_sizes"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({"volume_number": i, "size_kib": s, "props": {}, "flags": [],
                           "uuid": uuid(300 + i)})
                })
                .collect();
            let id = uuid(400 + st.rds.len());
            st.rds.push(
                json!({"name": name, "resource_group_name": group["name"], "props": {},
                "flags": [], "uuid": id, "volume_definitions": vds}),
            );
            created(
                MASK_RSC_DFN,
                format!("New resource definition '{name}' created."),
            )
        }
        ("GET", ["v1", "resource-definitions"]) => {
            let with_vd = query
                .iter()
                .any(|(k, v)| k == "with_volume_definitions" && v == "true");
            let mut rds = filter_by(&st.rds, "name", query, "resource_definitions");
            if !with_vd {
                for d in &mut rds {
                    d.as_object_mut().unwrap().remove("volume_definitions");
                }
            }
            (200, Value::Array(rds))
        }
        ("POST", ["v1", "resource-definitions", rd, "autoplace"]) => {
            autoplace(st, rd, body.unwrap())
        }
        ("GET", ["v1", "view", "resources"]) => {
            let rs = filter_by(&st.resources, "name", query, "resources");
            (200, Value::Array(rs))
        }
        ("GET", ["v1", "nodes"]) => (
            200,
            Value::Array(filter_by(&st.nodes, "name", query, "nodes")),
        ),
        _ => {
            let e = rc(MASK_ERROR, 0, 0, 300, &format!("no route {method} {path}"));
            (400, json!([e]))
        }
    }
}

fn autoplace(st: &mut State, rd: &str, b: &Value) -> (u16, Value) {
    let def = st.rds.iter().find(|d| d["name"] == rd).cloned().unwrap();
    let group = st
        .rgs
        .iter()
        .find(|g| g["name"] == def["resource_group_name"])
        .cloned()
        .unwrap();
    let place = b["select_filter"]["place_count"].as_i64().unwrap() as usize;
    let pool = b["select_filter"]["storage_pool"]
        .as_str()
        .or(group["select_filter"]["storage_pool_list"][0].as_str())
        .unwrap_or("DfltStorPool")
        .to_string();
    if !st.pools.values().any(|p| p.contains(&pool)) {
        // OperationFailed: a single ApiCallRc, as the spec has it for 500.
        let msg = format!("Storage pool definition '{pool}' not found.");
        let mut e = rc(
            MASK_ERROR,
            MASK_STOR_POOL_DFN,
            MASK_CRT,
            FAIL_NOT_FOUND_STOR_POOL_DFN,
            &msg,
        );
        e["cause"] = json!(format!(
            "The specified storage pool definition '{pool}' could not be found in the database"
        ));
        e["correction"] = json!(format!(
            "Create a storage pool definition with the name '{pool}' first."
        ));
        e["error_report_ids"] = json!(["6650A1B2-00000-000001"]);
        return (500, e);
    }
    let here: Vec<String> = st
        .resources
        .iter()
        .filter(|r| r["name"] == rd)
        .map(|r| r["node_name"].as_str().unwrap().to_string())
        .collect();
    let diskful = st
        .resources
        .iter()
        .filter(|r| r["name"] == rd && !is_diskless(r))
        .count();
    let candidates: Vec<String> = st
        .pools
        .iter()
        .filter(|(n, p)| p.contains(&pool) && !here.contains(n))
        .map(|(n, _)| n.clone())
        .collect();
    let need = place.saturating_sub(diskful);
    if candidates.len() < need {
        return (
            500,
            rc(
                MASK_ERROR,
                MASK_RSC_DFN,
                MASK_CRT,
                1004,
                "Not enough available nodes",
            ),
        );
    }
    let size = def["volume_definitions"][0]["size_kib"].clone();
    let mut msgs = vec![];
    for node in candidates.iter().take(need) {
        let id = st.resources.len();
        st.resources.push(json!({"name": rd, "node_name": node, "props": {"StorPoolName": pool},
            "flags": [], "uuid": uuid(500 + id), "create_timestamp": 1700000000000i64,
            "state": {"in_use": false},
            "layer_object": {"type": "DRBD", "children": [{"type": "STORAGE"}],
                "drbd": {"node_id": id, "peer_slots": 7, "may_promote": false, "promotion_score": 0}},
            "volumes": [{"volume_number": 0, "storage_pool_name": pool,
                "device_path": "/dev/drbd1000", "usable_size_kib": size}]}));
        let msg = format!("Resource '{rd}' on '{node}' ready");
        msgs.push(rc(0, MASK_RSC, MASK_CRT, CREATED, &msg));
    }
    // LINSTOR's auto tie-breaker: an even number of diskful replicas with
    // quorum on gets one diskless voter.
    let total = diskful + need;
    let quorum = group["props"]["DrbdOptions/Resource/quorum"] == "majority";
    if total % 2 == 0 && total >= 2 && quorum {
        if let Some(node) = candidates.get(need) {
            st.resources
                .push(json!({"name": rd, "node_name": node, "props": {},
                "flags": ["DISKLESS", "DRBD_DISKLESS", "TIE_BREAKER"], "uuid": uuid(600),
                "layer_object": {"type": "DRBD", "drbd": {"node_id": 9}}}));
            let msg = format!("Tie breaker resource '{rd}' created on {node}");
            msgs.push(rc(MASK_INFO, MASK_RSC, MASK_CRT, 1, &msg));
        }
    }
    (201, Value::Array(msgs))
}

/// Every request body matches its operation's request schema (strict), every
/// reply of the stand-in its response schema.
fn assert_spec_conformance(log: &[Recorded]) {
    for r in log {
        let tpl = template_of(&r.path);
        let m = r.method.to_lowercase();
        if let Some(body) = &r.body {
            let errs = errors_of(&request_schema(&m, tpl), body);
            assert!(
                errs.is_empty(),
                "{} {} body {body} invalid: {errs:?}",
                r.method,
                r.path
            );
        }
        let errs = errors_of(&response_schema(&m, tpl, r.status), &r.reply);
        assert!(
            errs.is_empty(),
            "stand-in reply to {} {} ({}) invalid: {errs:?}",
            r.method,
            r.path,
            r.status
        );
    }
}

fn calls(log: &[Recorded]) -> Vec<String> {
    log.iter()
        .map(|r| {
            let q: Vec<String> = r.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if q.is_empty() {
                format!("{} {}", r.method, r.path)
            } else {
                format!("{} {}?{}", r.method, r.path, q.join("&"))
            }
        })
        .collect()
}

const SF: &str = "xcp-persistent-ha-statefile";

// ---------------------------------------------------------------------------
// Scenarios

#[test]
fn provision_from_nothing_then_again_changes_nothing() {
    let c = Controller::start();
    let args = [
        "provision",
        "--volume",
        SF,
        "--size",
        "4MiB",
        "--storage-pool",
        "ha-pool",
    ];
    let (code, out, err) = c.run(&args);
    assert_eq!(code, EXIT_OK, "stdout:\n{out}\nstderr:\n{err}");
    let log = c.log();
    assert_eq!(
        calls(&log),
        [
            "GET /v1/resource-groups?resource_groups=xcp-ha-heartbeat",
            "POST /v1/resource-groups",
            "GET /v1/resource-groups/xcp-ha-heartbeat/volume-groups",
            "POST /v1/resource-groups/xcp-ha-heartbeat/volume-groups",
            "GET /v1/resource-definitions?resource_definitions=xcp-persistent-ha-statefile&with_volume_definitions=true",
            "POST /v1/resource-groups/xcp-ha-heartbeat/spawn",
            "GET /v1/view/resources?resources=xcp-persistent-ha-statefile",
            "POST /v1/resource-definitions/xcp-persistent-ha-statefile/autoplace",
            "GET /v1/view/resources?resources=xcp-persistent-ha-statefile",
        ]
    );
    let bodies: Vec<&Value> = log.iter().filter_map(|r| r.body.as_ref()).collect();
    assert_eq!(
        bodies[0],
        &json!({
            "name": "xcp-ha-heartbeat",
            "description": "XHA heartbeat volumes (statefile, redo log) served over HTTP/NBD",
            "props": {
                "DrbdOptions/Resource/quorum": "majority",
                "DrbdOptions/Resource/on-no-quorum": "io-error",
                "DrbdOptions/Resource/on-no-data-accessible": "io-error",
                "DrbdOptions/Resource/auto-promote": "no",
                "DrbdOptions/Resource/on-suspended-primary-outdated": "force-secondary",
                "DrbdOptions/auto-quorum": "disabled"
            },
            "select_filter": {"place_count": 3, "storage_pool": "ha-pool"}
        })
    );
    assert_eq!(bodies[1], &json!({"volume_number": 0}));
    assert_eq!(
        bodies[2],
        &json!({"resource_definition_name": SF, "volume_sizes": [4096], "definitions_only": true})
    );
    assert_eq!(
        bodies[3],
        &json!({"select_filter": {"place_count": 3, "storage_pool": "ha-pool"},
                "diskless_on_remaining": false})
    );
    assert_spec_conformance(&log);
    assert!(
        out.contains("resource group xcp-ha-heartbeat: created"),
        "{out}"
    );
    assert!(out.contains("replicas: host-a, host-b, host-c\n"), "{out}");
    assert!(out.contains("--device-size 4194304"), "{out}");

    // Second run: everything fetched and compared, nothing posted.
    c.clear_log();
    let (code, out, err) = c.run(&args);
    assert_eq!(code, EXIT_OK, "stdout:\n{out}\nstderr:\n{err}");
    let log = c.log();
    assert!(log.iter().all(|r| r.method == "GET"), "{:?}", calls(&log));
    assert_eq!(out.matches(": unchanged").count(), 4, "{out}");
    assert_spec_conformance(&log);
    let st = c.state.lock().unwrap();
    assert_eq!((st.rgs.len(), st.rds.len(), st.resources.len()), (1, 1, 3));
}

#[test]
fn existing_objects_with_other_settings_are_reported_not_changed() {
    let c = Controller::start();
    let (code, ..) = c.run(&[
        "provision",
        "--volume",
        SF,
        "--size",
        "4MiB",
        "--auto-promote",
        "yes",
    ]);
    assert_eq!(code, EXIT_OK);
    let props = c.state.lock().unwrap().rgs[0]["props"].clone();
    assert_eq!(props["DrbdOptions/Resource/auto-promote"], "yes");
    assert_eq!(props["DrbdOptions/Resource/auto-promote-timeout"], "600");
    c.clear_log();
    let (code, out, _) = c.run(&[
        "provision",
        "--volume",
        SF,
        "--size",
        "8MiB",
        "--place-count",
        "2",
    ]);
    assert_eq!(code, EXIT_DIFFERS, "{out}");
    for expected in [
        "property DrbdOptions/Resource/auto-promote is `yes`, wanted `no`",
        "DrbdOptions/Resource/on-suspended-primary-outdated is not set, wanted `force-secondary`",
        "select_filter.place_count is `3`, wanted `2`",
        "volume definition 0 size_kib is `4096`, wanted `8192`",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    assert!(c.log().iter().all(|r| r.method == "GET"));
}

#[test]
fn fail_exists_reply_is_handled_like_an_existing_group() {
    let c = Controller::start();
    let (code, ..) = c.run(&["provision", "--volume", SF, "--size", "4MiB"]);
    assert_eq!(code, EXIT_OK);
    c.clear_log();
    c.state.lock().unwrap().hide_rgs_once = true;
    let (code, out, err) = c.run(&["provision", "--volume", SF, "--size", "4MiB"]);
    assert_eq!(code, EXIT_OK, "{out}{err}");
    let log = c.log();
    let posts: Vec<_> = log.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].status, 400);
    assert!(
        out.contains("resource group xcp-ha-heartbeat: unchanged"),
        "{out}"
    );
    assert_eq!(c.state.lock().unwrap().rgs.len(), 1);
    assert_spec_conformance(&log);
}

#[test]
fn missing_storage_pool_surfaces_linstors_text_and_fails() {
    let c = Controller::start();
    let args = [
        "provision",
        "--volume",
        SF,
        "--size",
        "4MiB",
        "--storage-pool",
        "nosuchpool",
    ];
    let (code, out, err) = c.run(&args);
    assert_eq!(code, EXIT_FAILED, "{out}");
    for expected in [
        "placing 3 diskful replicas of xcp-persistent-ha-statefile (storage pool nosuchpool) failed",
        "LINSTOR error (code 309, storage pool definition): Storage pool definition 'nosuchpool' not found.",
        "cause: The specified storage pool definition 'nosuchpool' could not be found",
        "correction: Create a storage pool definition with the name 'nosuchpool' first.",
        "6650A1B2-00000-000001",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    assert_spec_conformance(&c.log());
}

#[test]
fn urls_lists_replica_hosts_with_their_addresses() {
    let c = Controller::start();
    let (code, ..) = c.run(&["provision", "--volume", SF, "--size", "4MiB"]);
    assert_eq!(code, EXIT_OK);
    c.clear_log();
    let (code, out, err) = c.run(&["urls", "--volume", SF, "--port", "8076"]);
    assert_eq!(code, EXIT_OK, "{err}");
    assert_eq!(
        out.trim(),
        "http://10.0.0.11:8076,http://[fd00::12]:8076,http://10.0.0.13:8076"
    );
    let log = c.log();
    assert_eq!(
        calls(&log),
        [
            "GET /v1/view/resources?resources=xcp-persistent-ha-statefile",
            "GET /v1/nodes?nodes=host-a&nodes=host-b&nodes=host-c",
        ]
    );
    assert_spec_conformance(&log);

    let (code, _, err) = c.run(&[
        "urls",
        "--volume",
        SF,
        "--port",
        "8076",
        "--net-interface",
        "storage",
    ]);
    assert_eq!(code, EXIT_FAILED);
    assert!(
        err.contains("node host-b has no net interface named `storage`"),
        "{err}"
    );

    // Two diskful replicas: LINSTOR adds a tie-breaker, left out unless asked.
    let redo = "xcp-persistent-redo-log";
    let (code, out, _) = c.run(&[
        "provision",
        "--volume",
        redo,
        "--size",
        "256MiB",
        "--place-count",
        "2",
        "--resource-group",
        "rg2",
    ]);
    assert_eq!(code, EXIT_OK, "{out}");
    assert!(out.contains("host-c (tie-breaker)"), "{out}");
    let (_, out, _) = c.run(&["urls", "--volume", redo, "--port", "8077"]);
    assert_eq!(out.trim(), "http://10.0.0.11:8077,http://[fd00::12]:8077");
    let (_, out, _) = c.run(&[
        "urls",
        "--volume",
        redo,
        "--port",
        "8077",
        "--include-tie-breakers",
    ]);
    assert_eq!(
        out.trim(),
        "http://10.0.0.11:8077,http://[fd00::12]:8077,http://10.0.0.13:8077"
    );

    let (code, _, err) = c.run(&["urls", "--volume", "nope", "--port", "1"]);
    assert_eq!(code, EXIT_FAILED);
    assert!(
        err.contains("volume nope has no replicas in LINSTOR; run `provision` for it first"),
        "{err}"
    );
}

#[test]
fn unreachable_controller_names_the_address_and_next_step() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let controller = format!("127.0.0.1:{port}");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = [
        "x",
        "urls",
        "--controller",
        &controller,
        "--volume",
        SF,
        "--port",
        "8076",
    ];
    let code = run_with_output(args, &mut out, &mut err).unwrap();
    let err = String::from_utf8(err).unwrap();
    assert_eq!(code, EXIT_FAILED);
    let expected = format!("cannot reach the LINSTOR controller at http://127.0.0.1:{port}");
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("linstor-controller runs"), "{err}");
}
