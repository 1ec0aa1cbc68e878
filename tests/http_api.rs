//! The HTTP API (contract sections 4, 7, 11 and 12) in process: the router
//! the server builds in embedded mode, driven one request at a time with
//! `tower::ServiceExt::oneshot`: no listener, no Redis, no process per
//! test. Each test checks what a user sees: the status, the envelope and
//! the body. (The socket side and the processes are `embedded.rs`; the
//! same routes across two replicas are `tests/e2e/http.test.mjs`.)

mod support;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use clap::Parser;
use fleetgate::{
    config::Cli,
    server::App,
    store::{Retention, memory::MemoryStore},
};
use serde_json::{Value, json};
use socketioxide::adapter::LocalAdapter;
use support::{SECRET, now_ms, token, token_for};
use tower::ServiceExt;

/// An embedded app with the test secret and `args`.
async fn app(args: &[&str]) -> App<LocalAdapter> {
    let args = ["fleetgate", "--jwt-secret", SECRET].into_iter().chain(args.iter().copied());
    let config = Cli::try_parse_from(args).expect("settings").config;
    let store = MemoryStore::new(Retention::from_config(&config));
    App::embedded(config, store).await.expect("app")
}

/// What one request got back.
struct Answer {
    status: StatusCode,
    content_type: String,
    text: String,
    json: Value,
}

async fn send(app: &App<LocalAdapter>, request: Request<Body>) -> Answer {
    let response = app.router().oneshot(request).await.expect("a response");
    let status = response.status();
    let content_type =
        response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, content_type, text, json }
}

/// A request with an optional bearer token and JSON body.
async fn call(app: &App<LocalAdapter>, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    send(app, request.body(body).expect("request")).await
}

/// The `data` of a successful reply, after checking the envelope.
fn ok(answer: &Answer) -> &Value {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert!(answer.content_type.starts_with("application/json"), "{}", answer.content_type);
    let envelope = answer.json.as_object().expect("an object");
    assert_eq!(envelope.len(), 2, "only ok and data: {}", answer.text);
    assert_eq!(envelope["ok"], true, "{}", answer.text);
    &envelope["data"]
}

/// The error message of a failed reply, after checking its status, the
/// envelope and the code.
fn err(answer: &Answer, status: StatusCode, code: &str) -> String {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert!(answer.content_type.starts_with("application/json"), "{}", answer.content_type);
    assert_eq!(answer.json.as_object().map(|o| o.len()), Some(2), "only ok and error: {}", answer.text);
    assert_eq!(answer.json["ok"], false, "{}", answer.text);
    let error = answer.json["error"].as_object().expect("an error object");
    assert_eq!(error.len(), 2, "only code and message: {}", answer.text);
    assert_eq!(error["code"], code, "{}", answer.text);
    let message = error["message"].as_str().expect("a message").to_owned();
    assert!(!message.is_empty());
    message
}

const FLEET_VEHICLES: &str = "/api/v1/fleets/f/vehicles";

fn location(vehicle: &str) -> String {
    format!("/api/v1/fleets/f/vehicles/{vehicle}/location")
}

#[tokio::test]
async fn tokens_that_are_missing_or_bad_are_refused_with_the_contract_codes() {
    let app = app(&[]).await;
    err(&call(&app, "GET", FLEET_VEHICLES, None, None).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    let basic = Request::get(FLEET_VEHICLES).header(header::AUTHORIZATION, "Basic dXNlcjpwYXNz").body(Body::empty());
    err(&send(&app, basic.unwrap()).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    err(&call(&app, "GET", FLEET_VEHICLES, Some("not-a-jwt"), None).await, StatusCode::UNAUTHORIZED, "invalid_token");
    let expired = token(json!({"sub": "v", "fleet": "f", "role": "viewer", "exp": now_ms() / 1000 - 5}));
    err(&call(&app, "GET", FLEET_VEHICLES, Some(&expired), None).await, StatusCode::UNAUTHORIZED, "token_expired");
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "v", "fleet": "f", "role": "viewer", "exp": now_ms() / 1000 + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-of-some-length"),
    )
    .unwrap();
    err(&call(&app, "GET", FLEET_VEHICLES, Some(&other_key), None).await, StatusCode::UNAUTHORIZED, "invalid_token");

    // A valid token, but of another fleet or the wrong role.
    let other_fleet = token_for("g", "viewer", "v");
    let message =
        err(&call(&app, "GET", FLEET_VEHICLES, Some(&other_fleet), None).await, StatusCode::FORBIDDEN, "forbidden");
    assert!(message.contains("another fleet"), "{message}");
    let viewer = token_for("f", "viewer", "v");
    let body = json!({"lat": 37.5, "lon": 127.0});
    let message = err(
        &call(&app, "PUT", &location("bus-1"), Some(&viewer), Some(body)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert!(message.contains("viewer"), "{message}");
}

#[tokio::test]
async fn an_invalid_position_is_refused_naming_the_field() {
    let app = app(&["--max-message-bytes", "4096"]).await;
    let bus = token_for("f", "vehicle", "bus-1");
    for (body, field) in [
        (json!({"lat": 91, "lon": 127.0}), "lat"),
        (json!({"lon": 127.0}), "lat"),
        (json!({"lat": 37.5, "lon": "east"}), "lon"),
        (json!({"lat": 37.5, "lon": 127.0, "heading": 360}), "heading"),
        (json!({"lat": 37.5, "lon": 127.0, "speed": -1}), "speed"),
        (json!({"lat": 37.5, "lon": 127.0, "vehicleId": "bus-2"}), "vehicleId"),
        (json!([37.5, 127.0]), "payload"),
    ] {
        let answer = call(&app, "PUT", &location("bus-1"), Some(&bus), Some(body.clone())).await;
        let message = err(&answer, StatusCode::BAD_REQUEST, "invalid_payload");
        assert!(message.starts_with(field), "{body}: {message}");
    }
    let dispatcher = token_for("f", "dispatcher", "d");
    let answer =
        call(&app, "PUT", &location("bus%201"), Some(&dispatcher), Some(json!({"lat": 37.5, "lon": 127.0}))).await;
    let message = err(&answer, StatusCode::BAD_REQUEST, "invalid_payload");
    assert!(message.starts_with("vehicle"), "{message}");
    let not_json = Request::put(location("bus-1"))
        .header(header::AUTHORIZATION, format!("Bearer {bus}"))
        .body(Body::from(r#"{"lat": 37.5, "lon": "#));
    let message = err(&send(&app, not_json.unwrap()).await, StatusCode::BAD_REQUEST, "invalid_payload");
    assert!(message.starts_with("body"), "{message}");
    let large = json!({"lat": 37.5, "lon": 127.0, "pad": "x".repeat(8192)});
    err(
        &call(&app, "PUT", &location("bus-1"), Some(&bus), Some(large)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
}

#[tokio::test]
async fn a_position_put_is_read_back_as_geojson() {
    let app = app(&[]).await;
    let bus = token_for("f", "vehicle", "bus-1");
    let ts = now_ms() - 1000;
    let body = json!({"lat": 37.5665, "lon": 126.978, "ts": ts, "speed": 8.5});
    let put = call(&app, "PUT", &location("bus-1"), Some(&bus), Some(body)).await;
    assert_eq!(ok(&put), &json!({"accepted": true}));
    // An older fix is not stored, and says so.
    let older =
        call(&app, "PUT", &location("bus-1"), Some(&bus), Some(json!({"lat": 37.0, "lon": 127.0, "ts": ts - 5000})))
            .await;
    assert_eq!(ok(&older), &json!({"accepted": false, "reason": "stale"}));

    let viewer = token_for("f", "viewer", "v");
    let one = call(&app, "GET", "/api/v1/fleets/f/vehicles/bus-1", Some(&viewer), None).await;
    let feature = ok(&one);
    assert_eq!(feature["type"], "Feature");
    assert_eq!(feature["id"], "bus-1");
    assert_eq!(feature["geometry"], json!({"type": "Point", "coordinates": [126.978, 37.5665]}));
    let props = &feature["properties"];
    assert_eq!(
        (&props["fleet"], &props["vehicleId"], &props["ts"], &props["speed"]),
        (&json!("f"), &json!("bus-1"), &json!(ts), &json!(8.5))
    );
    assert!(props["receivedAt"].as_i64().is_some_and(|t| t >= ts), "{props}");

    let all = call(&app, "GET", FLEET_VEHICLES, Some(&viewer), None).await;
    let collection = ok(&all);
    assert_eq!(collection["type"], "FeatureCollection");
    assert_eq!(collection["features"].as_array().map(Vec::len), Some(1), "{collection}");
    assert_eq!(&collection["features"][0], feature);
    // Outside the box: not listed.
    let elsewhere = call(&app, "GET", &format!("{FLEET_VEHICLES}?bbox=0,0,1,1"), Some(&viewer), None).await;
    assert_eq!(ok(&elsewhere)["features"], json!([]));
    // Bare GeoJSON when asked for.
    let bare = Request::get(FLEET_VEHICLES)
        .header(header::AUTHORIZATION, format!("Bearer {viewer}"))
        .header(header::ACCEPT, "application/geo+json")
        .body(Body::empty());
    let bare = send(&app, bare.unwrap()).await;
    assert_eq!((bare.status, bare.content_type.as_str()), (StatusCode::OK, "application/geo+json"));
    assert_eq!(&bare.json, collection);

    let unknown = call(&app, "GET", "/api/v1/fleets/f/vehicles/bus-9", Some(&viewer), None).await;
    err(&unknown, StatusCode::NOT_FOUND, "not_found");
}

const DEPOT: &str = "/api/v1/fleets/f/geofences/depot";

fn depot() -> Value {
    json!({
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[126.9, 37.5], [127.1, 37.5], [127.1, 37.6], [126.9, 37.6], [126.9, 37.5]]]},
        "properties": {"name": "Main depot"},
    })
}

#[tokio::test]
async fn a_geofence_is_created_read_and_deleted() {
    let app = app(&[]).await;
    let dispatcher = token_for("f", "dispatcher", "d");
    let viewer = token_for("f", "viewer", "v");
    err(&call(&app, "PUT", DEPOT, Some(&viewer), Some(depot())).await, StatusCode::FORBIDDEN, "forbidden");

    let stored = call(&app, "PUT", DEPOT, Some(&dispatcher), Some(depot())).await;
    let stored = ok(&stored).clone();
    assert_eq!(stored["type"], "Feature");
    assert_eq!(stored["id"], "depot", "the id is set to the path's");
    assert_eq!(stored["geometry"], depot()["geometry"]);
    assert_eq!(stored["properties"], json!({"name": "Main depot"}));

    // A vehicle reporting inside it is listed as inside.
    let bus = token_for("f", "vehicle", "bus-1");
    let put = call(&app, "PUT", &location("bus-1"), Some(&bus), Some(json!({"lat": 37.55, "lon": 127.0}))).await;
    assert_eq!(ok(&put)["accepted"], true);
    let read = call(&app, "GET", DEPOT, Some(&viewer), None).await;
    let read = ok(&read);
    assert_eq!(read["geometry"], stored["geometry"]);
    assert_eq!(read["properties"], json!({"name": "Main depot", "inside": ["bus-1"]}));
    let list = call(&app, "GET", "/api/v1/fleets/f/geofences", Some(&viewer), None).await;
    assert_eq!(ok(&list), &json!({"type": "FeatureCollection", "features": [stored]}));

    // An invalid shape is refused naming the member at fault.
    let mut open_ring = depot();
    open_ring["geometry"]["coordinates"][0][4] = json!([126.95, 37.55]);
    let message = err(
        &call(&app, "PUT", DEPOT, Some(&dispatcher), Some(open_ring)).await,
        StatusCode::BAD_REQUEST,
        "invalid_payload",
    );
    assert!(message.starts_with("geometry.coordinates"), "{message}");

    assert_eq!(ok(&call(&app, "DELETE", DEPOT, Some(&dispatcher), None).await), &json!({"deleted": true}));
    err(&call(&app, "GET", DEPOT, Some(&viewer), None).await, StatusCode::NOT_FOUND, "not_found");
    err(&call(&app, "DELETE", DEPOT, Some(&dispatcher), None).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_webhook_registration_never_shows_its_secret() {
    let app = app(&["--webhook-allow-private"]).await;
    let dispatcher = token_for("f", "dispatcher", "d");
    let path = "/api/v1/fleets/f/webhooks/crm";
    let secret = "a-secret-of-twenty-four!";
    let body = json!({"url": "http://127.0.0.1:9/hooks/fleetgate", "types": ["geofence"], "secret": secret});

    let viewer = token_for("f", "viewer", "v");
    err(&call(&app, "PUT", path, Some(&viewer), Some(body.clone())).await, StatusCode::FORBIDDEN, "forbidden");

    let created = call(&app, "PUT", path, Some(&dispatcher), Some(body.clone())).await;
    let view = json!({"id": "crm", "url": "http://127.0.0.1:9/hooks/fleetgate", "types": ["geofence"]});
    let mut expected = view.clone();
    expected["created"] = json!(true);
    assert_eq!(ok(&created), &expected);
    assert!(!created.text.contains(secret), "{}", created.text);
    let replaced = call(&app, "PUT", path, Some(&dispatcher), Some(body)).await;
    expected["created"] = json!(false);
    assert_eq!(ok(&replaced), &expected);
    assert!(!replaced.text.contains(secret), "{}", replaced.text);

    let list = call(&app, "GET", "/api/v1/fleets/f/webhooks", Some(&dispatcher), None).await;
    assert_eq!(ok(&list), &json!([view]));
    assert!(!list.text.contains(secret), "{}", list.text);

    let short = json!({"url": "http://127.0.0.1:9/hook", "secret": "short"});
    let message =
        err(&call(&app, "PUT", path, Some(&dispatcher), Some(short)).await, StatusCode::BAD_REQUEST, "invalid_payload");
    assert!(message.starts_with("secret"), "{message}");

    assert_eq!(ok(&call(&app, "DELETE", path, Some(&dispatcher), None).await), &json!({"deleted": true}));
    assert_eq!(ok(&call(&app, "GET", "/api/v1/fleets/f/webhooks", Some(&dispatcher), None).await), &json!([]));
}

#[tokio::test]
async fn unknown_routes_are_not_found_in_the_envelope() {
    let app = app(&[]).await;
    let viewer = token_for("f", "viewer", "v");
    for path in ["/api/v1/nothing", "/api/v2/fleets/f/vehicles", "/no/such/page"] {
        err(&call(&app, "GET", path, Some(&viewer), None).await, StatusCode::NOT_FOUND, "not_found");
        err(&call(&app, "GET", path, None, None).await, StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn readiness_turns_unavailable_as_soon_as_shutdown_begins() {
    let app = app(&[]).await;
    assert_eq!(ok(&call(&app, "GET", "/readyz", None, None).await), &json!({"status": "ready"}));
    app.begin_shutdown();
    let message = err(&call(&app, "GET", "/readyz", None, None).await, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(message, "shutting down");
    // Still alive while it drains.
    assert_eq!(ok(&call(&app, "GET", "/healthz", None, None).await), &json!({"status": "ok"}));
}

/// A component schema of the served document, by the `$ref` at `pointer`
/// in its operations.
fn component<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    let reference = doc.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no $ref at {pointer}"));
    let name = reference.strip_prefix("#/components/schemas/").expect("a component");
    &doc["components"]["schemas"][name]
}

fn fields(schema: &Value, key: &str) -> Vec<String> {
    let mut names: Vec<String> = match &schema[key] {
        Value::Object(props) => props.keys().cloned().collect(),
        Value::Array(names) => names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    names.sort();
    names
}

#[tokio::test]
async fn the_openapi_document_describes_the_bodies_the_routes_take_and_give() {
    let app = app(&[]).await;
    let doc = call(&app, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    let doc = &doc.json;
    let json = "content/application~1json/schema/$ref";
    let put_location = "/paths/~1api~1v1~1fleets~1{fleet}~1vehicles~1{vehicle}~1location/put";
    let position = component(doc, &format!("{put_location}/requestBody/{json}"));
    assert_eq!(fields(position, "properties"), ["accuracy", "heading", "lat", "lon", "speed", "ts", "vehicleId"]);
    assert_eq!(fields(position, "required"), Vec::<String>::new(), "lat/lon may be a location instead");
    let accepted = component(doc, &format!("{put_location}/responses/200/{json}"));
    assert_eq!(
        (fields(accepted, "properties"), fields(accepted, "required")),
        (vec!["accepted".into(), "reason".into()], vec!["accepted".into()])
    );

    let message = component(
        doc,
        &format!("/paths/~1api~1v1~1fleets~1{{fleet}}~1rooms~1{{room}}~1messages/post/responses/200/{json}"),
    );
    assert_eq!(fields(message, "required"), ["from", "id", "room", "text", "ts"]);

    let geofence = "/paths/~1api~1v1~1fleets~1{fleet}~1geofences~1{id}";
    let feature = component(doc, &format!("{geofence}/put/requestBody/{json}"));
    assert_eq!(fields(feature, "properties"), ["geometry", "id", "properties", "type"]);
    assert_eq!(component(doc, &format!("{geofence}/get/responses/200/{json}")), feature);

    let webhook = "/paths/~1api~1v1~1fleets~1{fleet}~1webhooks~1{id}/put";
    let registration = component(doc, &format!("{webhook}/requestBody/{json}"));
    assert_eq!(
        (fields(registration, "properties"), fields(registration, "required")),
        (vec!["secret".into(), "types".into(), "url".into()], vec!["secret".into(), "url".into()])
    );
    let registered = component(doc, &format!("{webhook}/responses/200/{json}"));
    assert!(!registered.to_string().contains("secret"), "{registered}");
}
