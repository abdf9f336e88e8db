//! Prints the daemon's OpenAPI document, as `docs/openapi.json` holds it:
//! `cargo run -p berth-daemon --example openapi > docs/openapi.json`.

fn main() {
    print!("{}", berth_daemon::openapi_json_text());
}
