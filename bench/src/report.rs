//! The results: a Markdown table with the targets, JSON for machines, and an SVG plot of
//! latency percentiles against open streams.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::scenarios::{Latency, Plan, Run, INGEST_ALONE, INGEST_ALONE_INFO, INGEST_SYSTEM};

pub struct Written {
    pub markdown: PathBuf,
    pub json: PathBuf,
    pub svg: PathBuf,
}

/// Median, minimum and maximum over the runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

fn stat(mut values: Vec<f64>) -> Stat {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return Stat {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    Stat {
        median: values[values.len() / 2],
        min: values[0],
        max: values[values.len() - 1],
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = if self.median.abs() >= 100.0 { 0 } else { 2 };
        if (self.max - self.min).abs() < f64::EPSILON {
            write!(f, "{:.p$}", self.median)
        } else {
            write!(f, "{:.p$} ({:.p$}–{:.p$})", self.median, self.min, self.max)
        }
    }
}

#[derive(Serialize)]
struct LatencyRow {
    streams: usize,
    rate: u64,
    spool_p50_ms: Stat,
    spool_p99_ms: Stat,
    spool_p999_ms: Stat,
    baseline_p50_ms: Stat,
    baseline_p99_ms: Stat,
    baseline_p999_ms: Stat,
    spool_delivered_ratio: Stat,
    /// Times a stream fell behind its site's channel, per open stream.
    spool_lagged_per_stream: Stat,
    p50_ratio: f64,
    p99_ratio: f64,
}

#[derive(Serialize)]
struct IngestRow {
    setup: &'static str,
    per_s: Stat,
    p50_ms: Stat,
    p99_ms: Stat,
    failed: Stat,
}

#[derive(Serialize)]
struct Summary<'a> {
    plan: &'a Plan,
    runs: usize,
    environment: Environment,
    latency: Vec<LatencyRow>,
    spool_idle_kib_per_stream: Stat,
    baseline_idle_kib_per_stream: Stat,
    spool_fanout_per_s: Stat,
    baseline_fanout_per_s: Stat,
    spool_fanout_backlog: Stat,
    baseline_fanout_backlog: Stat,
    spool_fanout_starved: Stat,
    baseline_fanout_starved: Stat,
    ingest: Vec<IngestRow>,
    jetstream_per_s: Stat,
    resume_clients: usize,
    resume_seconds: Stat,
    resume_missed: Stat,
    resume_duplicates: Stat,
    revalidator_per_s: Stat,
    revalidator_bulk_calls: Stat,
    raw: &'a [Run],
}

#[derive(Serialize)]
struct Environment {
    date: String,
    cpu: String,
    cores: usize,
    memory: String,
    kernel: String,
    rustc: String,
    nats_server: String,
    command: String,
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn environment() -> Environment {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Environment {
        date: time::OffsetDateTime::now_utc().date().to_string(),
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        memory: meminfo
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            .map(|kb| format!("{} GiB", kb.parse::<u64>().unwrap_or(0) / 1024 / 1024))
            .unwrap_or_default(),
        kernel: command_output("uname", &["-r"]),
        rustc: command_output("rustc", &["--version"]),
        nats_server: command_output(
            &spool_integration_tests::nats_server::binary()
                .display()
                .to_string(),
            &["--version"],
        ),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    }
}

fn rows(runs: &[Run], plan: &Plan) -> Vec<LatencyRow> {
    let mut rows = Vec::new();
    for &streams in &plan.streams {
        for &rate in &plan.rates {
            let pick = |system: &str, f: &dyn Fn(&Latency) -> f64| -> Stat {
                stat(
                    runs.iter()
                        .flat_map(|r| r.latency.iter())
                        .filter(|l| l.system == system && l.streams == streams && l.rate == rate)
                        .map(f)
                        .collect(),
                )
            };
            let spool_p50 = pick("spool", &|l| l.p50_ms);
            let spool_p99 = pick("spool", &|l| l.p99_ms);
            let base_p50 = pick("baseline", &|l| l.p50_ms);
            let base_p99 = pick("baseline", &|l| l.p99_ms);
            rows.push(LatencyRow {
                streams,
                rate,
                spool_p50_ms: spool_p50,
                spool_p99_ms: spool_p99,
                spool_p999_ms: pick("spool", &|l| l.p999_ms),
                baseline_p50_ms: base_p50,
                baseline_p99_ms: base_p99,
                baseline_p999_ms: pick("baseline", &|l| l.p999_ms),
                spool_delivered_ratio: pick("spool", &|l| {
                    l.delivered as f64 / l.expected.max(1) as f64
                }),
                spool_lagged_per_stream: pick("spool", &|l| {
                    l.lagged_streams as f64 / l.streams.max(1) as f64
                }),
                p50_ratio: spool_p50.median / base_p50.median,
                p99_ratio: spool_p99.median / base_p99.median,
            });
        }
    }
    rows
}

fn check(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

pub fn write(out: &str, plan: &Plan, runs: usize, results: &[Run]) -> anyhow::Result<Written> {
    let latency = rows(results, plan);
    let per = |f: &dyn Fn(&Run) -> f64| stat(results.iter().map(f).collect());
    let idle = |system: &str| {
        stat(
            results
                .iter()
                .flat_map(|r| r.latency.iter())
                .filter(|l| l.system == system)
                .map(|l| l.rss_idle_kib_per_stream)
                .collect(),
        )
    };
    let fan = |system: &str, f: &dyn Fn(&crate::scenarios::Fanout) -> f64| {
        stat(
            results
                .iter()
                .flat_map(|r| r.fanout.iter())
                .filter(|x| x.system == system)
                .map(f)
                .collect(),
        )
    };
    let summary = Summary {
        plan,
        runs,
        environment: environment(),
        spool_idle_kib_per_stream: idle("spool"),
        baseline_idle_kib_per_stream: idle("baseline"),
        spool_fanout_per_s: fan("spool", &|f| f.per_s),
        baseline_fanout_per_s: fan("baseline", &|f| f.per_s),
        spool_fanout_backlog: fan("spool", &|f| f.mean_backlog),
        baseline_fanout_backlog: fan("baseline", &|f| f.mean_backlog),
        spool_fanout_starved: fan("spool", &|f| f.starved * 100.0),
        baseline_fanout_starved: fan("baseline", &|f| f.starved * 100.0),
        ingest: [INGEST_ALONE, INGEST_ALONE_INFO, INGEST_SYSTEM]
            .into_iter()
            .map(|setup| {
                let pick = |f: &dyn Fn(&crate::scenarios::Ingest) -> f64| {
                    stat(
                        results
                            .iter()
                            .flat_map(|r| r.ingest.iter())
                            .filter(|i| i.setup == setup)
                            .map(f)
                            .collect(),
                    )
                };
                IngestRow {
                    setup,
                    per_s: pick(&|i| i.per_s),
                    p50_ms: pick(&|i| i.p50_ms),
                    p99_ms: pick(&|i| i.p99_ms),
                    failed: pick(&|i| i.failed as f64),
                }
            })
            .collect(),
        jetstream_per_s: per(&|r| r.jetstream_per_s),
        resume_clients: plan.resume_clients,
        resume_seconds: per(&|r| r.resume_seconds),
        resume_missed: per(&|r| r.resume_missed as f64),
        resume_duplicates: per(&|r| r.resume_duplicates as f64),
        revalidator_per_s: per(&|r| r.revalidator_per_s),
        revalidator_bulk_calls: per(&|r| r.revalidator_bulk_calls as f64),
        latency,
        raw: results,
    };
    let dir = Path::new(out);
    std::fs::create_dir_all(dir)?;
    let stem = if plan.quick { "quick" } else { "full" };
    let markdown = dir.join(format!("{stem}.md"));
    let json = dir.join(format!("{stem}.json"));
    let svg = dir.join(format!("{stem}-latency.svg"));
    std::fs::write(&json, serde_json::to_string_pretty(&summary)?)?;
    std::fs::write(&svg, plot(&summary))?;
    std::fs::write(&markdown, table(&summary, &svg))?;
    Ok(Written {
        markdown,
        json,
        svg,
    })
}

fn table(s: &Summary<'_>, svg: &Path) -> String {
    let e = &s.environment;
    let mut md = format!(
        "# Spool Live benchmark ({})\n\n{} on {} ({} cores, {}), Linux {}; {}; {}. {} run(s), median (min–max).\nCommand: `{}`.\n\n",
        if s.plan.quick { "quick" } else { "full" },
        e.date, e.cpu, e.cores, e.memory, e.kernel, e.rustc, e.nats_server, s.runs, e.command
    );
    md.push_str("## Webhook → every SSE client: latency (ms), against a bare SSE broadcast\n\n");
    md.push_str("The same load client reads both servers. Spool Live: a signed webhook to the ingest, stored by JetStream, read by the delivery's feed and sent to every stream. The bare broadcast (tokio, no NATS, no auth, no JSON handling; each stream writes the frames it has ready in one write): `POST /publish` of the very event JSON the delivery sends for the same webhook, broadcast as a `data:` frame, so that both write and the clients read the same bytes per event. Latency runs from the publisher's send to the client's parse, for every event and stream. Each row is measured on a fresh bare server and then on Spool Live, back to back, so that both meet the machine in the same state; so is the fan-out. *Lags per stream*: how many times a Spool stream fell behind its site's 1,024-event channel and caught up from the window instead (`spool_delivery_streams_lagged_total`, divided by the streams); the bare server skips what a lagging stream missed, which would show as less than 100 % delivered.\n\n");
    md.push_str("| streams | events/s | Spool p50 | Spool p99 | Spool p99.9 | bare p50 | bare p99 | bare p99.9 | p50 ratio | p99 ratio | delivered | lags per stream | target ≤ 1.3× |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in &s.latency {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2}× | {:.2}× | {:.1} % | {:.2} | {} |\n",
            r.streams,
            r.rate,
            r.spool_p50_ms,
            r.spool_p99_ms,
            r.spool_p999_ms,
            r.baseline_p50_ms,
            r.baseline_p99_ms,
            r.baseline_p999_ms,
            r.p50_ratio,
            r.p99_ratio,
            r.spool_delivered_ratio.median * 100.0,
            r.spool_lagged_per_stream.median,
            check(r.p50_ratio <= 1.3 && r.p99_ratio <= 1.3)
        ));
    }
    let fan_ratio = s.spool_fanout_per_s.median / s.baseline_fanout_per_s.median;
    md.push_str(&format!(
        "\n![latency against open streams]({})\n\n## Throughput, memory, resume\n\n| measure | Spool Live | baseline | ratio | target |\n|---|---:|---:|---:|---|\n",
        svg.file_name().and_then(|n| n.to_str()).unwrap_or("latency.svg")
    ));
    // A server left without events for more than a few percent of the window was not
    // saturated: the figure is then the publisher's.
    let unsaturated =
        if s.spool_fanout_starved.median > 5.0 || s.baseline_fanout_starved.median > 5.0 {
            "; **not saturated all the time**, see below"
        } else {
            ""
        };
    md.push_str(&format!(
        "| fan-out at saturation, deliveries/s ({} streams, {} events per stream queued{unsaturated}) | {} | {} | {:.2}× | ≥ 0.8×: {} |\n",
        s.plan.fanout_streams,
        crate::scenarios::FANOUT_BACKLOG,
        s.spool_fanout_per_s,
        s.baseline_fanout_per_s,
        fan_ratio,
        check(fan_ratio >= 0.8)
    ));
    md.push_str(&format!(
        "| RSS per idle open stream, KiB | {} | {} | {:.2}× | ≤ 12 KiB: {} |\n",
        s.spool_idle_kib_per_stream,
        s.baseline_idle_kib_per_stream,
        s.spool_idle_kib_per_stream.median / s.baseline_idle_kib_per_stream.median,
        check(s.spool_idle_kib_per_stream.median <= 12.0)
    ));
    for row in &s.ingest {
        let what = match row.setup {
            INGEST_ALONE => "ingest and nats-server only",
            INGEST_ALONE_INFO => "ingest and nats-server only, at the default `RUST_LOG=info`",
            _ => "whole system running (a delivery consumes every event)",
        };
        let failed = if row.failed.max > 0.0 {
            format!(", **{} failed**", row.failed)
        } else {
            String::new()
        };
        md.push_str(&format!(
            "| signed webhooks/s through ingest, with JetStream acks: {what} (p50 {} ms, p99 {} ms{failed}) | {} | {} (raw publish-acks/s) | {:.2}× | ≥ 20,000/s: {} |\n",
            row.p50_ms,
            row.p99_ms,
            row.per_s,
            s.jetstream_per_s,
            row.per_s.median / s.jetstream_per_s.median,
            check(row.per_s.median >= 20_000.0 && row.failed.max == 0.0)
        ));
    }
    md.push_str(&format!(
        "| resume storm: {} clients resumed after a delivery restart, caught up in s | {} | | | ≤ 3 s, none missed: {} |\n",
        s.resume_clients, s.resume_seconds,
        check(s.resume_seconds.median <= 3.0 && s.resume_missed.max == 0.0 && s.resume_duplicates.max == 0.0)
    ));
    md.push_str(&format!(
        "| resume storm: events missed / duplicated | {} / {} | | | 0 / 0 |\n",
        s.resume_missed, s.resume_duplicates
    ));
    md.push_str(&format!(
        "| revalidator: events/s to a fast local target | {} | | | |\n",
        s.revalidator_per_s
    ));
    md.push_str(&format!(
        "| revalidator: calls for a 500-item bulk publish | {} | | | |\n",
        s.revalidator_bulk_calls
    ));
    md.push_str(&format!(
        "\n### What the fan-out row measures\n\n\
         {} SSE streams are open on the server (the delivery, or the baseline), read by this \
         load generator. A publisher on a thread of its own keeps about {} events per stream \
         sent and not yet received, topping up in bursts of HTTP/1.1 \
         requests pipelined on {} keep-alive connections, the same way for both systems \
         (signed webhooks to the ingest, `POST /publish` to the baseline): the server always \
         has events to send and no queue on the way overflows (both read 1,024-event \
         channels), so nothing is skipped. Deliveries \
         (events received, summed over the streams) are counted over {} s after a 0.5 s \
         warm-up. Backlog over that window, sampled every 5 ms: Spool Live {} events per \
         stream on average, below one event {} % of the time; baseline {}, {} %. Both servers \
         write the frames they have ready together (hyper's write buffer; the baseline \
         gathers what its channel holds into one write), so the figure grows with the \
         backlog allowed; it is the same for both.\n",
        s.plan.fanout_streams,
        crate::scenarios::FANOUT_BACKLOG,
        crate::scenarios::FANOUT_CONNECTIONS,
        s.plan.fanout_seconds,
        s.spool_fanout_backlog,
        s.spool_fanout_starved,
        s.baseline_fanout_backlog,
        s.baseline_fanout_starved,
    ));
    md.push_str(&format!(
        "\n### What the ingest rows measure\n\n\
         The real `spool-ingest` release binary as a process of its own, on loopback with its \
         `nats-server` (JetStream, file storage), and this load generator share the machine's \
         cores. {} distinct webhooks, each built and signed before the clock starts (signing \
         is the CMS's cost), are sent by {} workers on keep-alive connections opened by an \
         uncounted warm-up; a webhook counts when its `202` has arrived, which the ingest sends \
         only after JetStream's ack. *Ingest and nats-server only*: a fresh pair, nothing else \
         running. *Whole system running*: the ingest and delivery of the latency steps, the delivery's \
         feed consuming every event as it is stored. The services log JSON at `warn` \
         (`RUST_LOG=warn`) except in the `info` row: at `info`, the default, the ingest also \
         records its per-request tracing spans. The raw figure is JetStream publish-acks/s \
         from one async-nats client (256 in flight, 400-byte messages) on the system's server, \
         the ceiling for the ingest.\n",
        s.plan.ingest_requests,
        crate::scenarios::INGEST_CONCURRENCY
    ));
    md.push_str("\nThe load generator shares the machine's cores with the servers; absolute figures drift between machines and runs, the ratios to the baseline measured in the same run less so.\n");
    md
}

/// Latency percentiles (ms, log scale) against open streams, for the lowest event rate.
fn plot(s: &Summary<'_>) -> String {
    let rate = s.plan.rates.first().copied().unwrap_or(100);
    let rows: Vec<&LatencyRow> = s.latency.iter().filter(|r| r.rate == rate).collect();
    let (w, h, left, bottom, top, right) = (640.0, 400.0, 70.0, 50.0, 40.0, 160.0);
    type Series<'a> = (&'a str, &'a str, Box<dyn Fn(&LatencyRow) -> f64>);
    let series: [Series; 4] = [
        ("Spool p50", "#1f77b4", Box::new(|r| r.spool_p50_ms.median)),
        ("Spool p99", "#1f77b4", Box::new(|r| r.spool_p99_ms.median)),
        (
            "bare p50",
            "#ff7f0e",
            Box::new(|r| r.baseline_p50_ms.median),
        ),
        (
            "bare p99",
            "#ff7f0e",
            Box::new(|r| r.baseline_p99_ms.median),
        ),
    ];
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| series.iter().map(move |(_, _, f)| f(r)))
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let (lo, hi) = if values.is_empty() {
        (0.1, 10.0)
    } else {
        ((lo / 2.0).log10().floor(), (hi * 2.0).log10().ceil())
    };
    let y = |v: f64| {
        top + (h - top - bottom) * (1.0 - ((v.max(1e-3).log10() - lo) / (hi - lo).max(1e-9)))
    };
    let n = rows.len().max(1);
    let x = |i: usize| {
        left + (w - left - right)
            * if n == 1 {
                0.5
            } else {
                i as f64 / (n - 1) as f64
            }
    };
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"24\" font-size=\"14\">Webhook → SSE latency at {rate} events/s (ms, log scale)</text>\n");
    for decade in (lo as i32)..=(hi as i32) {
        let v = 10f64.powi(decade);
        svg.push_str(&format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v}</text>\n", w - right, y(v), y(v), left - 6.0, y(v) + 4.0));
    }
    for (i, r) in rows.iter().enumerate() {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{} streams</text>\n",
            x(i),
            h - bottom + 20.0,
            r.streams
        ));
    }
    for (k, (name, color, f)) in series.iter().enumerate() {
        let dash = if name.ends_with("p99") {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let points: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{:.1},{:.1}", x(i), y(f(r))))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
            points.join(" ")
        ));
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            svg.push_str(&format!(
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{color}\"/>\n"
            ));
        }
        let ly = top + 20.0 + 20.0 * k as f64;
        svg.push_str(&format!("<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{name}</text>\n", w - right + 10.0, w - right + 40.0, w - right + 46.0, ly + 4.0));
    }
    svg.push_str("</svg>\n");
    svg
}
