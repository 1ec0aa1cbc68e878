//! Property tests of everything that reads client input before it is
//! trusted: `locationupdate` payloads, `subscribe` selections, room names
//! and chat texts, bounding boxes, HTTP JSON bodies and tokens. Arbitrary
//! input must never panic and must fail with the contract's code; inputs
//! built to be valid (or valid but for one field) must parse to what was
//! built (or name that field).
//!
//! A normal `cargo test` runs a small number of cases per property (a few
//! seconds in all). For a longer hunt:
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release --test fuzz_parsing
//! ```
//!
//! A failure is shrunk to a minimal input and saved in
//! `tests/fuzz_parsing.proptest-regressions`, which is replayed first on
//! later runs (commit it with the fix).

use clap::Parser;
use fleetgate::{
    auth::{Authenticator, Keys, MAX_TOKEN_BYTES, Role},
    config::{Cli, Config},
    error::{ApiError, ErrorCode},
    gateway::{rooms, viewer::Selection},
    geo::BBox,
    http::JsonBody,
    ids,
    position::PositionUpdate,
    session::Session,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Cases per property: small by default, `PROPTEST_CASES` overrides.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    // Failures are kept beside this file (the default looks for a src/ it cannot find).
    let persistence = proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions");
    ProptestConfig { cases, failure_persistence: Some(Box::new(persistence)), ..ProptestConfig::default() }
}

fn num(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Field names the parsers read, so that random objects hit real fields.
const FIELDS: &[&str] = &[
    "vehicleId",
    "busId",
    "lat",
    "lon",
    "ts",
    "heading",
    "speed",
    "accuracy",
    "location",
    "type",
    "coordinates",
    "latitude",
    "longitude",
    "fleet",
    "vehicles",
    "bbox",
    "room",
    "text",
    "limit",
    "before",
    "providerId",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => prop::sample::select(FIELDS).prop_map(str::to_owned), 1 => ".{0,8}"]
}

/// Numbers at and around the bounds the parsers check.
fn edgy_number() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        0.0,
        -0.0,
        90.0,
        -90.0,
        90.000001,
        180.0,
        -180.0,
        180.000001,
        359.999,
        360.0,
        -1e-300,
        5e-324,
        1e300,
        9.0e15,
        1.7e12,
        1.7e12 + 0.5,
    ])
    .prop_map(num)
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(num),
        edgy_number(),
        ".{0,12}".prop_map(Value::String),
        "[A-Za-z0-9._:-]{1,8}".prop_map(Value::String),
        "-?[0-9]{1,3}\\.[0-9]{1,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn is_code(e: &ApiError, codes: &[ErrorCode]) -> bool {
    codes.contains(&e.code)
}

// ---- locationupdate -------------------------------------------------------

/// A valid update, as the values it should parse to.
#[derive(Debug, Clone)]
struct Fix {
    vehicle_id: Option<String>,
    lat: f64,
    lon: f64,
    ts: Option<i64>,
    heading: Option<f64>,
    speed: Option<f64>,
    accuracy: Option<f64>,
}

fn fix() -> impl Strategy<Value = Fix> {
    (
        prop::option::of("[A-Za-z0-9._:-]{1,64}"),
        -90.0f64..=90.0,
        -180.0f64..=180.0,
        prop::option::of(0i64..4_000_000_000_000),
        prop::option::of(0.0f64..360.0),
        prop::option::of(0.0f64..100.0),
        prop::option::of(0.0f64..1e4),
    )
        .prop_filter("null island", |f| !(f.1 == 0.0 && f.2 == 0.0))
        .prop_map(|(vehicle_id, lat, lon, ts, heading, speed, accuracy)| Fix {
            vehicle_id,
            lat,
            lon,
            ts,
            heading,
            speed,
            accuracy,
        })
}

/// The optional fields, absent ones as `null` or missing at random.
fn extras(f: &Fix, nulls: bool) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| match v {
        Some(v) => {
            m.insert(k.into(), v);
        }
        None if nulls => {
            m.insert(k.into(), Value::Null);
        }
        None => {}
    };
    put("vehicleId", f.vehicle_id.clone().map(Value::String));
    put("ts", f.ts.map(Value::from));
    put("heading", f.heading.map(num));
    put("speed", f.speed.map(num));
    put("accuracy", f.accuracy.map(num));
    m
}

/// The same fix in the three accepted forms (5.1 lat/lon, 5.1 GeoJSON, 5.5 bus-app).
fn forms(f: &Fix, nulls: bool) -> [Value; 3] {
    let mut flat = extras(f, nulls);
    flat.insert("lat".into(), num(f.lat));
    flat.insert("lon".into(), num(f.lon));
    let mut geo = extras(f, nulls);
    geo.insert("location".into(), json!({"type": "Point", "coordinates": [f.lon, f.lat]}));
    let mut bus = extras(f, nulls);
    if let Some(Value::String(id)) = bus.remove("vehicleId") {
        bus.insert("busId".into(), Value::String(id));
    }
    // Bus apps send strings; Rust prints floats so that they read back exactly.
    bus.insert("location".into(), json!({"latitude": f.lat.to_string(), "longitude": f.lon}));
    [Value::Object(flat), Value::Object(geo), Value::Object(bus)]
}

/// A value that breaks one field, and the name the error must start with.
fn corruption() -> impl Strategy<Value = (&'static str, Value)> {
    let not_a_number = prop_oneof![
        Just(json!("1.5")),
        Just(json!(true)),
        Just(json!([1])),
        Just(json!({})),
        ".{0,6}".prop_map(Value::String)
    ];
    prop_oneof![
        prop_oneof![
            (90.0f64..1e9).prop_map(num),
            (-1e9f64..-90.0).prop_filter("below -90", |x| *x < -90.0).prop_map(num)
        ]
        .prop_filter("out of range", |v| v.as_f64().is_some_and(|x| x.abs() > 90.0))
        .prop_map(|v| ("lat", v)),
        prop_oneof![(180.0f64..1e9).prop_map(num), (-1e9f64..-180.0).prop_map(num)]
            .prop_filter("out of range", |v| v.as_f64().is_some_and(|x| x.abs() > 180.0))
            .prop_map(|v| ("lon", v)),
        not_a_number.clone().prop_map(|v| ("lat", v)),
        not_a_number.clone().prop_map(|v| ("lon", v)),
        prop_oneof![
            (0.0f64..1e12).prop_filter("fractional", |x| x.fract() != 0.0).prop_map(num),
            Just(num(1e16)),
            Just(json!("1732200000000"))
        ]
        .prop_map(|v| ("ts", v)),
        prop_oneof![(360.0f64..1e6).prop_map(num), (-1e6f64..0.0).prop_filter("negative", |x| *x < 0.0).prop_map(num)]
            .prop_map(|v| ("heading", v)),
        not_a_number.clone().prop_map(|v| ("heading", v)),
        (-1e6f64..0.0).prop_filter("negative", |x| *x < 0.0).prop_map(|v| ("speed", num(v))),
        not_a_number.clone().prop_map(|v| ("speed", v)),
        (-1e6f64..0.0).prop_filter("negative", |x| *x < 0.0).prop_map(|v| ("accuracy", num(v))),
        not_a_number.prop_map(|v| ("accuracy", v)),
        prop_oneof![
            Just(json!("")),
            Just(json!("x".repeat(65))),
            Just(json!(12)),
            "[A-Za-z0-9]{0,5}[ /{}\u{e9}][A-Za-z0-9]{0,5}".prop_map(Value::String)
        ]
        .prop_map(|v| ("vehicleId", v)),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn position_parse_never_panics(v in json_value()) {
        match PositionUpdate::parse(&v) {
            Ok(u) => {
                prop_assert!((-90.0..=90.0).contains(&u.lat) && (-180.0..=180.0).contains(&u.lon));
                prop_assert!(!(u.lat == 0.0 && u.lon == 0.0));
                prop_assert!(u.heading.is_none_or(|h| (0.0..360.0).contains(&h)));
                prop_assert!(u.speed.is_none_or(|s| s >= 0.0) && u.accuracy.is_none_or(|a| a >= 0.0));
                prop_assert!(u.vehicle_id.as_deref().is_none_or(ids::is_valid_id));
            }
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidPayload),
        }
    }

    #[test]
    fn position_forms_parse_to_what_was_sent(f in fix(), nulls in any::<bool>()) {
        for form in forms(&f, nulls) {
            let u = PositionUpdate::parse(&form).map_err(|e| TestCaseError::fail(format!("{form}: {e}")))?;
            prop_assert_eq!((u.lat, u.lon), (f.lat, f.lon));
            prop_assert_eq!(&u.vehicle_id, &f.vehicle_id);
            prop_assert_eq!((u.ts, u.heading, u.speed, u.accuracy), (f.ts, f.heading, f.speed, f.accuracy));
        }
    }

    #[test]
    fn one_bad_field_is_named(f in fix(), (field, bad) in corruption()) {
        let [Value::Object(mut flat), ..] = forms(&f, false) else { unreachable!() };
        flat.insert(field.into(), bad);
        let e = PositionUpdate::parse(&Value::Object(flat.clone())).expect_err("a corrupted field");
        prop_assert_eq!(e.code, ErrorCode::InvalidPayload);
        prop_assert!(e.message.starts_with(field), "{}: {:?} for {}", field, e.message, Value::Object(flat));
    }

    #[test]
    fn bbox_parse_matches_its_rules(items in prop::collection::vec(prop_oneof![
        (-200.0f64..200.0).prop_map(num), edgy_number(), json_value()
    ], 0..6)) {
        let v = Value::Array(items.clone());
        let numbers: Option<Vec<f64>> = items.iter().map(Value::as_f64).collect();
        let valid = numbers.filter(|n| n.len() == 4).is_some_and(|n| {
            n.iter().all(|x| x.is_finite())
                && [n[0], n[2]].iter().all(|x| (-180.0..=180.0).contains(x))
                && [n[1], n[3]].iter().all(|y| (-90.0..=90.0).contains(y))
                && n[1] <= n[3]
        });
        match BBox::from_json(&v, "bbox") {
            Ok(_) => prop_assert!(valid, "{} accepted", v),
            Err(e) => {
                prop_assert!(!valid, "{} refused: {}", v, e);
                prop_assert!(e.code == ErrorCode::InvalidPayload && e.message.starts_with("bbox"));
            }
        }
    }
}

// ---- subscribe, rooms, chat ---------------------------------------------

fn session() -> Session {
    Session {
        session_id: ids::new_session_id(),
        sub: "viewer-1".into(),
        fleet: "demo".into(),
        role: Role::Viewer,
        vehicle: None,
        vehicles: None,
        expires_at: fleetgate::clock::now_ms() + 60_000,
    }
}

const MAX_SUBS: usize = 8;

#[derive(Debug, Clone)]
enum FleetField {
    Absent,
    Own,
    Other(String),
    Bad(Value),
}

#[derive(Debug, Clone)]
enum VehiclesField {
    Absent,
    Ids(Vec<String>),
    WithBadItem(Vec<String>, Value),
    NotArray(Value),
}

fn fleet_field() -> impl Strategy<Value = FleetField> {
    prop_oneof![
        Just(FleetField::Absent),
        Just(FleetField::Own),
        "[A-Za-z0-9._:-]{1,64}".prop_filter("another fleet", |f| f != "demo").prop_map(FleetField::Other),
        prop_oneof![Just(json!("")), Just(json!("de mo")), Just(json!(7)), Just(json!(["demo"]))]
            .prop_map(FleetField::Bad),
    ]
}

fn vehicles_field() -> impl Strategy<Value = VehiclesField> {
    // Few distinct ids, so duplicates are common.
    let ids = prop::collection::vec(prop::sample::select(vec!["a", "b", "bus-1", "c:2", "d.e"]), 0..MAX_SUBS + 3)
        .prop_map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>());
    prop_oneof![
        1 => Just(VehiclesField::Absent),
        3 => ids.clone().prop_map(VehiclesField::Ids),
        1 => (ids, prop_oneof![Just(json!("")), Just(json!(1)), Just(json!(null)), Just(json!("a b"))])
            .prop_map(|(v, bad)| VehiclesField::WithBadItem(v, bad)),
        1 => prop_oneof![Just(json!("bus-1")), Just(json!({})), Just(json!(3))].prop_map(VehiclesField::NotArray),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn selection_parse_never_panics(v in json_value()) {
        let s = session();
        match Selection::parse(&v, &s, MAX_SUBS) {
            Ok(sel) => {
                prop_assert_eq!(&sel.fleet, &s.fleet);
                prop_assert!(sel.vehicles.len() <= MAX_SUBS && sel.vehicles.iter().all(|v| ids::is_valid_id(v)));
                let unique: std::collections::HashSet<_> = sel.vehicles.iter().collect();
                prop_assert_eq!(unique.len(), sel.vehicles.len());
            }
            Err(e) => prop_assert!(is_code(&e, &[ErrorCode::InvalidPayload, ErrorCode::Forbidden, ErrorCode::PayloadTooLarge])),
        }
    }

    /// Fleet, then vehicles, then bbox: the first bad one decides the code.
    #[test]
    fn selection_parse_follows_the_contract(
        fleet in fleet_field(),
        vehicles in vehicles_field(),
        bbox in prop_oneof![Just(None), Just(Some(json!([126.9, 37.4, 127.1, 37.6]))), Just(Some(json!([0, 10, 0, 5])))],
    ) {
        let mut payload = Map::new();
        let mut expected: Result<(), ErrorCode> = Ok(());
        let mut fail = |code| if expected.is_ok() { expected = Err(code) };
        match &fleet {
            FleetField::Absent => {}
            FleetField::Own => { payload.insert("fleet".into(), json!("demo")); }
            FleetField::Other(f) => { payload.insert("fleet".into(), json!(f)); fail(ErrorCode::Forbidden); }
            FleetField::Bad(v) => { payload.insert("fleet".into(), v.clone()); fail(ErrorCode::InvalidPayload); }
        }
        let mut want: Vec<String> = Vec::new();
        match &vehicles {
            VehiclesField::Absent => {}
            VehiclesField::Ids(list) => {
                payload.insert("vehicles".into(), json!(list));
                if list.is_empty() {
                    fail(ErrorCode::InvalidPayload);
                } else if list.len() > MAX_SUBS {
                    fail(ErrorCode::PayloadTooLarge);
                }
                for v in list {
                    if !want.contains(v) { want.push(v.clone()); }
                }
            }
            VehiclesField::WithBadItem(list, bad) => {
                let mut items: Vec<Value> = list.iter().map(|v| json!(v)).collect();
                items.push(bad.clone());
                fail(if items.len() > MAX_SUBS { ErrorCode::PayloadTooLarge } else { ErrorCode::InvalidPayload });
                payload.insert("vehicles".into(), Value::Array(items));
            }
            VehiclesField::NotArray(v) => { payload.insert("vehicles".into(), v.clone()); fail(ErrorCode::InvalidPayload); }
        }
        if let Some(b) = &bbox {
            if b[1].as_f64() > b[3].as_f64() { fail(ErrorCode::InvalidPayload); }
            payload.insert("bbox".into(), b.clone());
        }
        let got = Selection::parse(&Value::Object(payload.clone()), &session(), MAX_SUBS);
        match (got, expected) {
            (Ok(sel), Ok(())) => {
                prop_assert_eq!(sel.fleet, "demo");
                prop_assert_eq!(sel.vehicles, want);
                prop_assert_eq!(sel.bbox.is_some(), bbox.is_some());
            }
            (Err(e), Err(code)) => prop_assert_eq!(e.code, code, "{}", Value::Object(payload)),
            (got, want) => {
                let got = got.map(|_| ()).map_err(|e| e.code);
                return Err(TestCaseError::fail(format!("{}: got {got:?}, want {want:?}", Value::Object(payload))));
            }
        }
    }

    #[test]
    fn room_names_follow_the_id_grammar(v in prop_oneof![json_value(), ".{0,70}".prop_map(Value::String)]) {
        let valid = v.as_str().is_some_and(ids::is_valid_id);
        match rooms::room_name(Some(&v)) {
            Ok(r) => prop_assert!(valid && v == r),
            Err(e) => prop_assert!(!valid && e.code == ErrorCode::InvalidPayload && e.message.starts_with("room")),
        }
    }

    #[test]
    fn chat_texts_are_1_to_2000_chars(
        v in prop_oneof![
            json_value(),
            (0usize..3).prop_map(|n| Value::String("é".repeat(n))),
            (1995usize..2006).prop_map(|n| Value::String("ü".repeat(n))),
        ]
    ) {
        let valid = v.as_str().is_some_and(|t| (1..=rooms::MAX_TEXT_CHARS).contains(&t.chars().count()));
        match rooms::message_text(Some(&v)) {
            Ok(t) => prop_assert!(valid && v == t),
            Err(e) => prop_assert!(!valid && e.code == ErrorCode::InvalidPayload && e.message.starts_with("text")),
        }
    }
}

// ---- HTTP bodies ----------------------------------------------------------

fn read_body(bytes: Vec<u8>) -> Result<Value, ApiError> {
    use axum::extract::FromRequest;
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let request = axum::http::Request::new(axum::body::Body::from(bytes));
    runtime.block_on(JsonBody::<Value>::from_request(request, &())).map(|JsonBody(v)| v)
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn http_bodies_are_json_or_invalid_payload(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        match read_body(bytes.clone()) {
            Ok(v) => prop_assert_eq!(Some(v), serde_json::from_slice::<Value>(&bytes).ok()),
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::InvalidPayload);
                prop_assert!(e.message.starts_with("body"));
            }
        }
    }

    #[test]
    fn http_json_bodies_read_back(v in json_value()) {
        // Compared with serde_json's own reading: its float parsing is not
        // exact to the last bit, and the body must not differ from it.
        let bytes = serde_json::to_vec(&v).unwrap();
        let read = read_body(bytes.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Some(read), serde_json::from_slice::<Value>(&bytes).ok());
    }
}

// ---- tokens ---------------------------------------------------------------

const SECRETS: [(&str, &str); 2] =
    [("k1", "first-secret-long-enough-for-hs256"), ("k2", "second-secret-long-enough-for-hs256")];

fn strict_config() -> Config {
    let secrets = SECRETS.map(|(k, s)| format!("{k}:{s}")).join(",");
    Cli::parse_from([
        "fleetgate",
        "--jwt-secrets",
        &secrets,
        "--jwt-issuer",
        "fleet-auth",
        "--jwt-audience",
        "fleetgate",
    ])
    .config
}

fn authenticator() -> &'static Authenticator {
    static AUTH: std::sync::LazyLock<Authenticator> = std::sync::LazyLock::new(|| {
        let cfg = strict_config();
        Authenticator::new(Keys::from_config(&cfg).expect("keys"), &cfg)
    });
    &AUTH
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    fleetgate::clock::now_ms() / 1000
}

/// How a generated token is signed.
#[derive(Debug, Clone, Copy)]
enum Signer {
    /// A configured secret under its own kid.
    Own(usize),
    /// A configured secret without a kid (any key may verify it).
    NoKid(usize),
    /// A configured secret under the other secret's kid.
    SwappedKid(usize),
    /// A configured secret under a kid nobody configured.
    UnknownKid(usize),
    /// A secret nobody configured.
    Stranger,
}

#[derive(Debug, Clone)]
struct TokenCase {
    signer: Signer,
    /// Seconds from now; ≥ 10 away from it so a ticking clock changes nothing.
    exp: i64,
    nbf: Option<i64>,
    iss: Option<&'static str>,
    aud: Option<Value>,
    sub: &'static str,
    fleet: &'static str,
    role: &'static str,
}

fn offset() -> impl Strategy<Value = i64> {
    prop_oneof![-1_000_000i64..-10, 10i64..1_000_000]
}

fn token_case() -> impl Strategy<Value = TokenCase> {
    let signer = prop_oneof![
        3 => (0usize..2).prop_map(Signer::Own),
        1 => (0usize..2).prop_map(Signer::NoKid),
        1 => (0usize..2).prop_map(Signer::SwappedKid),
        1 => (0usize..2).prop_map(Signer::UnknownKid),
        1 => Just(Signer::Stranger),
    ];
    (
        signer,
        offset(),
        prop::option::of(offset()),
        prop::sample::select(vec![Some("fleet-auth"), Some("fleet-auth"), Some("other"), None]),
        prop::sample::select(vec![
            Some(json!("fleetgate")),
            Some(json!("fleetgate")),
            Some(json!(["x", "fleetgate"])),
            Some(json!("other")),
            None,
        ]),
        prop::sample::select(vec!["bus-1", "bus-1", ""]),
        prop::sample::select(vec!["demo", "demo", "de mo"]),
        prop::sample::select(vec!["vehicle", "viewer", "dispatcher", "admin"]),
    )
        .prop_map(|(signer, exp, nbf, iss, aud, sub, fleet, role)| TokenCase {
            signer,
            exp,
            nbf,
            iss,
            aud,
            sub,
            fleet,
            role,
        })
}

impl TokenCase {
    fn token(&self) -> String {
        let (secret, kid) = match self.signer {
            Signer::Own(i) => (SECRETS[i].1, Some(SECRETS[i].0)),
            Signer::NoKid(i) => (SECRETS[i].1, None),
            Signer::SwappedKid(i) => (SECRETS[i].1, Some(SECRETS[1 - i].0)),
            Signer::UnknownKid(i) => (SECRETS[i].1, Some("k3")),
            Signer::Stranger => ("nobody-configured-this-secret", Some("k1")),
        };
        let mut claims = json!({"sub": self.sub, "fleet": self.fleet, "role": self.role, "exp": now() + self.exp});
        if let Some(nbf) = self.nbf {
            claims["nbf"] = json!(now() + nbf);
        }
        if let Some(iss) = self.iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = &self.aud {
            claims["aud"] = aud.clone();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    /// The contract's answer: signature first, then required claims, then
    /// expiry, then everything else.
    fn expected(&self) -> Result<(), ErrorCode> {
        let signed = matches!(self.signer, Signer::Own(_) | Signer::NoKid(_));
        if !signed || self.iss.is_none() || self.aud.is_none() {
            return Err(ErrorCode::InvalidToken);
        }
        if self.exp < 0 {
            return Err(ErrorCode::TokenExpired);
        }
        let aud_ok = self
            .aud
            .as_ref()
            .is_some_and(|a| a == "fleetgate" || a.as_array().is_some_and(|l| l.contains(&json!("fleetgate"))));
        let ok = self.nbf.is_none_or(|n| n < 0)
            && self.iss == Some("fleet-auth")
            && aud_ok
            && !self.sub.is_empty()
            && ids::is_valid_id(self.fleet)
            && Role::parse(self.role).is_some();
        if ok { Ok(()) } else { Err(ErrorCode::InvalidToken) }
    }
}

/// JWT-shaped text: three base64url parts of JSON (or not), with headers
/// that name every algorithm, `none` among them.
fn jwt_shaped() -> impl Strategy<Value = String> {
    let header = (
        prop::sample::select(vec!["HS256", "HS384", "RS256", "ES256", "PS256", "EdDSA", "none", "None", "NONE", ""]),
        prop::option::of(prop_oneof![Just("k1".to_owned()), Just("k2".to_owned()), ".{0,10}"]),
    )
        .prop_map(|(alg, kid)| {
            let mut h = json!({"alg": alg, "typ": "JWT"});
            if let Some(kid) = kid {
                h["kid"] = json!(kid);
            }
            b64(h.to_string().as_bytes())
        });
    let part = prop_oneof![
        json_value().prop_map(|v| b64(v.to_string().as_bytes())),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| b64(&b)),
        "[A-Za-z0-9_=+/.-]{0,40}",
    ];
    (prop_oneof![3 => header, 1 => part.clone()], part.clone(), part).prop_map(|(h, p, s)| format!("{h}.{p}.{s}"))
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn random_text_is_never_a_token(s in prop_oneof![".{0,200}", prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned())]) {
        let e = authenticator().verify(&s).expect_err("random text");
        prop_assert_eq!(e.code, ErrorCode::InvalidToken);
    }

    #[test]
    fn jwt_shaped_forgeries_are_invalid_tokens(t in jwt_shaped()) {
        let e = authenticator().verify(&t).expect_err("unsigned");
        prop_assert_eq!(e.code, ErrorCode::InvalidToken);
    }

    #[test]
    fn oversized_tokens_are_refused(extra in 1usize..4096) {
        let token = "a".repeat(MAX_TOKEN_BYTES + extra);
        prop_assert_eq!(authenticator().verify(&token).unwrap_err().message, "token too large");
    }

    #[test]
    fn signed_tokens_get_the_contract_code(case in token_case()) {
        let got = authenticator().verify(&case.token()).map(|_| ()).map_err(|e| e.code);
        prop_assert_eq!(got, case.expected(), "{:?}", case);
    }
}
