//! `conquer status --http URL`: the ventilator's live view (`/api/status`) as a table in a
//! terminal, once or refreshing (`--watch`).

use crate::observe::FarmStatus;
use crate::report::rate;
use anyhow::{anyhow, Context};
use std::time::Duration;

/// The live view's base URL from `--http` as given: `HOST:PORT` or `http://HOST:PORT`,
/// with any path a proxy mounts it under; a trailing `/`, `/api` or `/api/status` is
/// dropped (the status is fetched from `BASE/api/status`).
pub fn base_url(given: &str) -> anyhow::Result<String> {
    let expected = || {
        anyhow!("--http {given:?}: expected HOST:PORT or http://HOST:PORT, such as 127.0.0.1:8080")
    };
    let (scheme, rest) = match given.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_owned(), given),
    };
    if scheme != "http" {
        anyhow::bail!("--http {given:?}: the live view speaks plain http, not {scheme}");
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let port = authority
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|_| !authority.ends_with(']'));
    let host_ok = !authority.is_empty() && !authority.starts_with(':');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !host_ok || !port_ok {
        return Err(expected());
    }
    let mut path = path.trim_end_matches('/');
    for tail in ["/api/status", "/api"] {
        path = path.strip_suffix(tail).unwrap_or(path);
    }
    Ok(format!("{scheme}://{authority}{path}"))
}

/// Fetches the status from `base` (`http://HOST:PORT`), with `token` as a bearer token.
pub fn fetch(base: &str, token: Option<&str>) -> anyhow::Result<FarmStatus> {
    let url = format!("{}/api/status", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(&url);
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().map_err(|e| {
        anyhow!("cannot reach the live view at {url}: {e} (is the ventilator running with --http?)")
    })?;
    let code = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    match code {
        200 => {}
        401 => anyhow::bail!("{url} wants the farm's secret: pass --secret-file"),
        _ if body.trim().is_empty() => anyhow::bail!(
            "{url} answered {code} (is this the address a conquer ventilator serves with --http?)"
        ),
        _ => anyhow::bail!("{url} answered {code}: {}", body.trim()),
    }
    if body.trim() == "{}" {
        anyhow::bail!("{url}: the ventilator has no batch yet; try again in a moment");
    }
    serde_json::from_str(&body).with_context(|| format!("{url} did not send a conquer status"))
}

/// The status as a table.
pub fn render(s: &FarmStatus) -> String {
    // A job counts in items; its chunks, cut as it runs, are a detail.
    let job = s.items > 0;
    let (held, total, unit, per_s) = if job {
        (s.items_held, s.items, "items", s.items_per_s)
    } else {
        (s.held as u64, s.tasks as u64, "tasks", s.tasks_per_s)
    };
    let what = if job {
        format!(" items held ({} of {} chunks)", s.held, s.tasks)
    } else {
        " held".to_owned()
    };
    let mut out = format!(
        "batch {} ({}): {held} of {total}{what}, {} in flight, {} pending; {} {unit}/s, ETA {}, efficiency {}\n\
         ok {}, failed {}, redispatched {}, duplicates {}, rejected {}, refused {}\n\n",
        s.batch,
        if s.finished { "finished" } else { &s.phase },
        s.in_flight,
        s.pending,
        rate(per_s),
        match s.eta_s {
            _ if held >= total => "done".to_owned(),
            Some(eta) => format!("{eta:.1} s"),
            None => "unknown".to_owned(),
        },
        s.efficiency
            .map_or_else(|| "not yet measured".to_owned(), |e| format!("{e:.3}")),
        s.ok,
        s.failed,
        s.redispatched,
        s.duplicates,
        s.rejected,
        s.refused,
    );
    out += &format!(
        "{:<24} {:<16} {:<9} {:<24} {:<7} {:>7} {:>8} {:>6} {:>9} {:>6} {:>7} {:>10} {:>9} {:>9}\n",
        "worker",
        "host",
        "backend",
        "adapter",
        "state",
        "holding",
        "done",
        "failed",
        format!("{unit}/s"),
        "busy",
        "device",
        "dispatches",
        "in",
        "out"
    );
    let share = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |b| format!("{:.0}%", 100.0 * b));
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    for w in &s.workers {
        out += &format!(
            "{:<24} {:<16} {:<9} {:<24} {:<7} {:>7} {:>8} {:>6} {:>9} {:>6} {:>7} {:>10} {:>9} {:>9}\n",
            cut(&w.name, 24),
            cut(&or_dash(&w.address), 16),
            cut(&w.backend, 9),
            cut(&or_dash(&w.adapter), 24),
            w.state,
            w.holding,
            w.done,
            w.failed,
            rate(w.items_per_s),
            share(w.busy_share),
            share(w.device_share),
            w.dispatches,
            conquer_core::text::bytes(w.input_bytes),
            conquer_core::text::bytes(w.output_bytes),
        );
    }
    if let Some(k) = &s.sink {
        out += &format!("\n{}\n", sink_line(k));
    }
    // A coordinator's jobs, as `conquer jobs` lists them.
    if !s.jobs.is_empty() {
        out += &format!(
            "\n{:>6}  {:<9}  {:>17}  {:>7}  {:>8}  {:>10}  {:>8}  name\n",
            "job", "state", "held / tasks", "workers", "priority", "elapsed", "eta"
        );
        let seconds = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"));
        for j in &s.jobs {
            out += &format!(
                "{:>6}  {:<9}  {:>17}  {:>7}  {:>8}  {:>10}  {:>8}  {}\n",
                j.id,
                j.state,
                format!("{} / {}", j.held, j.tasks),
                j.workers,
                j.priority,
                seconds(j.elapsed_s),
                seconds(j.eta_s),
                conquer_core::text::printable(&j.name)
            );
        }
    }
    out
}

/// The sink's side in one line: results file, outputs, hits, verification, picture.
fn sink_line(k: &crate::protocol::SinkSide) -> String {
    let mut parts = vec![if k.results.is_empty() {
        "no results file".to_owned()
    } else {
        format!("results {} ({} bytes)", k.results, k.results_bytes)
    }];
    if !k.outputs.is_empty() {
        parts.push(format!("{} outputs in {}", k.outputs_written, k.outputs));
    }
    if k.hits > 0 {
        let shown: Vec<String> = k.first_hits.iter().map(u32::to_string).collect();
        let more = if k.hits > k.first_hits.len() as u64 {
            ", …"
        } else {
            ""
        };
        parts.push(format!("{} hits: {}{more}", k.hits, shown.join(", ")));
    }
    if k.checked > 0 {
        parts.push(format!(
            "verified {} of {} checked ({} differ)",
            k.verified, k.checked, k.mismatches
        ));
    }
    if !k.picture.is_empty() {
        parts.push(format!(
            "picture {} {}",
            k.picture,
            k.picture_state.as_str()
        ));
    }
    format!("sink: {}", parts.join("; "))
}

fn cut(text: &str, width: usize) -> String {
    let text = crate::logging::printable(text);
    if text.chars().count() <= width {
        text.into_owned()
    } else {
        let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinators_jobs_are_listed_under_its_table() {
        let mut s = FarmStatus::default();
        assert!(!render(&s).contains("held / tasks"), "no jobs, no list");
        s.jobs.push(crate::observe::JobStatus {
            id: 7,
            name: "nightly".into(),
            state: "running".into(),
            priority: 3,
            tasks: 500,
            held: 120,
            workers: 2,
            elapsed_s: Some(4.25),
            eta_s: None,
            reason: String::new(),
        });
        let text = render(&s);
        let line = text.lines().find(|l| l.contains("nightly")).expect(&text);
        for word in ["7", "running", "120 / 500", "2", "3", "4.2 s", "-"] {
            assert!(line.contains(word), "{word} in {line}");
        }
    }

    #[test]
    fn the_live_views_address_is_taken_as_given_and_checked() {
        for (given, base) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://box-a:8080/", "http://box-a:8080"),
            ("http://127.0.0.1:1/api", "http://127.0.0.1:1"),
            ("http://127.0.0.1:1/api/status", "http://127.0.0.1:1"),
            ("http://proxy/conquer/", "http://proxy/conquer"),
            ("[::1]:8080", "http://[::1]:8080"),
            ("HTTP://h:1", "http://h:1"),
        ] {
            assert_eq!(base_url(given).unwrap(), base, "{given}");
        }
        for bad in [
            "",
            "http://",
            ":8080",
            "127.0.0.1:99999",
            "h:0",
            "ftp://x",
            "https://h:1",
        ] {
            let e = base_url(bad).expect_err(bad).to_string();
            assert!(e.starts_with("--http"), "{bad}: {e}");
        }
    }
}
