//! The live map page as a browser fetches it: the page, the vendored
//! Leaflet and Socket.IO files and the map settings, each with its content
//! type and caching, served byte for byte from the binary; and nothing the
//! page itself loads comes from another origin (the tile template reaches
//! it through `map-config.json`, from the configuration).

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::{Value, json};
use support::{Server, start_failure};

const OSM_TILES: &str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("a UTF-8 body")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A GET as a browser sends it, with the reply's headers (the support
/// helpers keep only status and body).
fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n").expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reply");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let reply = Reply { status, headers, body: raw[split + 4..].to_vec() };
    assert_ne!(reply.header("transfer-encoding"), Some("chunked"), "{path}: a fixed-length body is expected");
    reply
}

fn vendored(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/static/vendor/{name}", env!("CARGO_MANIFEST_DIR"))).expect("vendored file")
}

/// Every value of `attr="…"` (or `'…'`) in `html`.
fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let needle = format!("{attr}=");
    let mut rest = html;
    while let Some(at) = rest.find(&needle) {
        let preceded_by_space = rest[..at].ends_with(|c: char| c.is_whitespace());
        rest = &rest[at + needle.len()..];
        let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
        let Some(end) = rest[1..].find(quote) else { break };
        if preceded_by_space {
            out.push(rest[1..1 + end].to_owned());
        }
        rest = &rest[1 + end..];
    }
    out
}

/// Every `url(…)` of a stylesheet, unquoted.
fn css_urls(css: &str) -> Vec<String> {
    css.split("url(")
        .skip(1)
        .filter_map(|s| s.split_once(')'))
        .map(|(u, _)| u.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .collect()
}

/// Whether a reference resolves to another origin: it has a scheme
/// (`https:`, `javascript:`…; `data:` is inline) or is protocol-relative.
fn leaves_the_origin(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    if lower.starts_with("//") {
        return true;
    }
    let scheme = lower.split(':').next().unwrap_or("");
    lower.contains(':')
        && scheme != "data"
        && !scheme.is_empty()
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
}

#[test]
fn the_page_its_libraries_and_settings_are_served_with_their_types() {
    let server = Server::start(&[]);

    let page = get(server.addr, "/");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.text().contains("fleetgate live map"));

    for (path, file, content_type) in [
        ("/vendor/leaflet.js", "leaflet.js", "text/javascript; charset=utf-8"),
        ("/vendor/leaflet.css", "leaflet.css", "text/css; charset=utf-8"),
        ("/vendor/socket.io.min.js", "socket.io.min.js", "text/javascript; charset=utf-8"),
    ] {
        let asset = get(server.addr, path);
        assert_eq!(asset.status, 200, "{path}");
        assert_eq!(asset.header("content-type"), Some(content_type), "{path}");
        assert_eq!(asset.header("cache-control"), Some("public, max-age=86400"), "{path}");
        assert!(asset.body == vendored(file), "{path} is static/vendor/{file} unmodified");
    }

    let settings = get(server.addr, "/map-config.json");
    assert_eq!(settings.status, 200);
    assert_eq!(settings.header("content-type"), Some("application/json"));
    assert_eq!(settings.header("cache-control"), Some("no-cache"), "a restart with new settings reaches the next load");
    assert_eq!(settings.json(), json!({"tileUrl": OSM_TILES, "tileAttribution": "© OpenStreetMap contributors"}));

    // Leaflet's marker and layer-switcher images are not vendored: the page uses neither.
    assert_eq!(get(server.addr, "/vendor/images/marker-icon.png").status, 404);
}

#[test]
fn the_page_loads_nothing_from_another_origin() {
    let server = Server::start(&[]);
    let html = get(server.addr, "/").text();

    let mut refs = attribute_values(&html, "src");
    refs.extend(attribute_values(&html, "href"));
    assert!(refs.iter().any(|r| r == "vendor/leaflet.js"), "the page loads Leaflet: {refs:?}");
    assert!(refs.iter().any(|r| r == "vendor/leaflet.css"), "and its stylesheet: {refs:?}");
    assert!(refs.iter().any(|r| r == "vendor/socket.io.min.js"), "and the Socket.IO client: {refs:?}");
    for r in &refs {
        assert!(!leaves_the_origin(r), "the page references {r}");
        if !r.starts_with("data:") {
            // Relative to `/`, as the browser resolves them.
            assert_eq!(get(server.addr, &format!("/{r}")).status, 200, "{r} is served");
        }
    }
    for u in css_urls(&html) {
        assert!(!leaves_the_origin(&u), "the page's style loads {u}");
    }
    assert!(!html.contains("@import"), "no imported stylesheets");
    // No absolute URL anywhere in the page, scripts included: the tile
    // template is the only one it uses, and comes from the settings.
    for scheme in ["http://", "https://"] {
        assert!(!html.contains(scheme), "the page names a {scheme} URL");
    }

    let css = String::from_utf8(vendored("leaflet.css")).expect("UTF-8");
    let css_refs = css_urls(&css);
    assert!(!css_refs.is_empty(), "the scan sees Leaflet's url() references");
    for u in css_refs {
        assert!(!leaves_the_origin(&u), "leaflet.css loads {u}");
    }
}

#[test]
fn the_map_settings_come_from_the_configuration_as_data() {
    let attribution = "Tiles © <Example & Co> \"maps\"";
    let server = Server::start(&[
        ("FLEETGATE_MAP_TILE_URL", "/tiles/{z}/{x}/{y}.png".into()),
        ("FLEETGATE_MAP_TILE_ATTRIBUTION", attribution.into()),
    ]);
    let settings = get(server.addr, "/map-config.json");
    assert_eq!(settings.status, 200);
    // Verbatim: the page inserts the attribution as text, never as markup.
    assert_eq!(settings.json(), json!({"tileUrl": "/tiles/{z}/{x}/{y}.png", "tileAttribution": attribution}));
    let html = get(server.addr, "/").text();
    assert!(!html.contains("/tiles/") && !html.contains("Example"), "settings are not written into the page");
    drop(server);

    let off = Server::start(&[("FLEETGATE_MAP_TILE_URL", "none".into())]);
    assert_eq!(get(off.addr, "/map-config.json").json()["tileUrl"], Value::Null, "tiles off: the grid only");
    drop(off);

    for bad in ["tile.example/{z}/{x}/{y}.png", "https://tile.example/{z}/{x}.png"] {
        let (status, stderr) = start_failure(&[("FLEETGATE_MAP_TILE_URL", bad.into())]);
        assert!(!status.success(), "{bad} is refused at start");
        assert!(stderr.contains("tile URL"), "{bad}: the refusal says why: {stderr}");
    }
}

#[test]
fn the_reference_scan_catches_what_it_must() {
    let html = r#"<script src="https://cdn.example/x.js"></script><link href='//cdn.example/y.css'>
        <img data-src="ignored"><a href="vendor/z.js">"#;
    let refs: Vec<String> = attribute_values(html, "src").into_iter().chain(attribute_values(html, "href")).collect();
    assert_eq!(refs, ["https://cdn.example/x.js", "//cdn.example/y.css", "vendor/z.js"]);
    assert!(leaves_the_origin(&refs[0]) && leaves_the_origin(&refs[1]) && !leaves_the_origin(&refs[2]));
    assert!(leaves_the_origin("javascript:alert(1)"));
    assert!(!leaves_the_origin("data:,") && !leaves_the_origin("#default#VML") && !leaves_the_origin("images/a.png"));
    assert_eq!(
        css_urls("a{background:url('images/x.png')} b{behavior:url(#default#VML)}"),
        ["images/x.png", "#default#VML"]
    );
}
