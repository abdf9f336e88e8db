//! The Grafana dashboard against a real Prometheus: Debian's `prometheus` scrapes a running
//! `berth serve` every second while requests come and go, and every PromQL expression in
//! `dashboards/berth.json` answers data through Prometheus' HTTP API.

use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};

use super::*;

/// A read-only token for the scraper: `/metrics` needs no more.
const SCRAPE_TOKEN: &str = "prometheus-scrape-token-0123";
/// Seconds added to the time since the workload started to make the window Grafana's interval
/// variables stand for: every `rate` and `increase` then sees the whole workload, however slow
/// the machine.
const RATE_WINDOW_MARGIN_S: u64 = 10;
/// How long the queries may take to answer once the workload is done.
const CHECK_LIMIT: Duration = Duration::from_secs(20);

/// A Prometheus process of the test's; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(binary: &Path, dir: &Path, target: &str) -> Prometheus {
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: berth\n    scrape_interval: 1s\n\
             \x20   authorization: {{ credentials: {SCRAPE_TOKEN} }}\n\
             \x20   static_configs: [{{ targets: [\"{target}\"] }}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = berth_testkit::free_port("127.0.0.1");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        berth_testkit::wait_for("prometheus ready", Duration::from_secs(30), || {
            ureq::get(&format!("{}/-/ready", p.url))
                .call()
                .ok()
                .map(|_| ())
        });
        p
    }

    /// `GET /api/v1/{path}`: the answer's `data`.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut req = ureq::get(&format!("{}/api/v1/{path}", self.url));
        for (k, v) in query {
            req = req.query(k, v);
        }
        let body: Value = match req.call() {
            Ok(r) => r.into_json().unwrap(),
            Err(ureq::Error::Status(code, r)) => {
                panic!(
                    "prometheus {path} {query:?}: {code}: {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => panic!("prometheus {path}: {e}"),
        };
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// The series an instant query returns now, with their values.
    fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let data = self.api("query", &[("query", expr)]);
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{expr}: not a vector: {data}"))
            .iter()
            .map(|s| {
                let v = s["value"][1].as_str().unwrap_or("NaN");
                (s["metric"].clone(), v.parse().unwrap_or(f64::NAN))
            })
            .collect()
    }
}

/// Every `expr` in the dashboard, with its panel's title.
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = berth_testkit::workspace_dir().join("dashboards/berth.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((title.clone(), e.to_owned()));
            }
        }
    }
    out
}

/// `expr` with each Grafana variable (`$name`, `${name}`) replaced: the interval variables by
/// `window`, any other by a value its label has in Prometheus now.
fn substitute(expr: &str, prom: &Prometheus, window: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced
                    .find('}')
                    .unwrap_or_else(|| panic!("{expr}: unclosed ${{"));
                (&braced[..end], end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        let value = match name {
            "__rate_interval" | "__interval" | "__range" => window.to_owned(),
            label => {
                let values = prom.api(&format!("label/{label}/values"), &[]);
                values[0]
                    .as_str()
                    .unwrap_or_else(|| {
                        panic!("{expr}: the variable ${label} has no value in Prometheus")
                    })
                    .to_owned()
            }
        };
        out.push_str(&value);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Requests that run, pass, fail into breakpoints and end, one after another: every family
/// the dashboard plots changes while Prometheus watches.
fn workload(api: &Api, rounds: usize) {
    for round in 0..rounds {
        let r = api.ok(
            "POST",
            "/v1/requests",
            Some(json!({"template": "linux", "count": 2, "requester": "ci-east", "hold_on_failure": true})),
        );
        let id = r["id"].as_u64().unwrap();
        let path = format!("/v1/requests/{id}");
        berth_testkit::wait_for("the request's vms running", Duration::from_secs(20), || {
            let r = api.ok("GET", &path, None);
            let vms = r["vms"].as_array().unwrap().clone();
            vms.iter().all(|v| v["state"] == "running").then_some(())
        });
        let vms = vm_ids(&api.ok("GET", &path, None));
        api.ok(
            "POST",
            &format!("/v1/vms/{}/result", vms[0]),
            Some(json!({"passed": true})),
        );
        // One breakpoint in all: the rest pass.
        let passed = round > 0;
        api.ok(
            "POST",
            &format!("/v1/vms/{}/result", vms[1]),
            Some(json!({"passed": passed})),
        );
        // More than the fleet holds, so that the queue is not empty either.
        if round == 0 {
            api.ok(
                "POST",
                "/v1/requests",
                Some(json!({"template": "linux", "count": 1000, "cpus": 16})),
            );
        }
        std::thread::sleep(Duration::from_millis(400));
    }
}

#[test]
fn prometheus_scrapes_berth_serve_and_every_dashboard_query_has_data() {
    let Some(prometheus) = berth_testkit::find_program("prometheus") else {
        berth_testkit::skip_or_fail(
            "prometheus is not installed, so the dashboard's queries are not run against one \
             (Debian's `prometheus` package)",
        );
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{CONFIG}\n[[tokens]]\nname = \"prometheus\"\ntoken = \"{SCRAPE_TOKEN}\"\nrole = \"read-only\"\n\
         \n[[hooks]]\nname = \"false\"\non = \"vm.done\"\ncommand = [\"false\"]\n\
         \n[fair_share]\nhalf_life_minutes = 60\ndefault_weight = 1\n\
         \n[[quotas]]\naccount = \"*\"\nclass = \"sim-large\"\nguarantee = {{ vcpus = 64 }}\n\
         \n[[quotas]]\naccount = \"*\"\nclass = \"sim-small\"\nguarantee = {{ vcpus = 16 }}\n"
    );
    let serve = serve(&dir.path().join("serve"), &config);
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let target = serve.url.trim_start_matches("http://").to_owned();
    let prom = Prometheus::start(&prometheus, &prom_dir, &target);
    berth_testkit::wait_for("prometheus scraping berth", Duration::from_secs(20), || {
        prom.query("up{job=\"berth\"} == 1").first().map(|_| ())
    });

    let workload_started = Instant::now();
    workload(&serve.api(), 8);

    // Each expression, polled until it answers a number: the last scrape may be a second
    // behind the workload.
    let deadline = Instant::now() + CHECK_LIMIT;
    let mut empty = Vec::new();
    for (title, expr) in dashboard_exprs() {
        let window = format!(
            "{}s",
            workload_started.elapsed().as_secs() + RATE_WINDOW_MARGIN_S
        );
        let query = substitute(&expr, &prom, &window);
        let answered = loop {
            let series = prom.query(&query);
            if series.iter().any(|(_, v)| v.is_finite()) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if !answered {
            empty.push(format!("{title}: {query} → {:?}", prom.query(&query)));
        }
    }
    let mut log = String::new();
    if !empty.is_empty() {
        let _ = writeln!(
            log,
            "prometheus log:\n{}",
            std::fs::read_to_string(prom_dir.join("prometheus.log")).unwrap_or_default()
        );
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}\n{log}",
        empty.join("\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the check took {:?}",
        started.elapsed()
    );
}
