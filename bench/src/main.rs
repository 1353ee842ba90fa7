//! `make bench`: Spool Live measured on this machine, side by side with the bare limit of
//! the same box (a minimal SSE broadcast server, and raw JetStream publishes), reported as
//! ratios to that baseline. Results go to `results/` as Markdown, JSON and an SVG plot.
//!
//! `spool-bench [--quick] [--runs N] [--out results]`; `spool-bench baseline` is the bare
//! server (started by the suite as a process of its own); `spool-bench ingest|delivery|
//! revalidator [ARGS]` are the focused load tools ([`tools`]).
//!
//! `spool-bench --latency STREAMS RATE [--seconds S] [--runs N]` measures one latency row,
//! for both systems, and only prints it (to rerun a row, or to profile the servers under it).
//!
//! Every run ends with two rows of their own:
//! - memory: RSS of each service under steady events (100,000 after a warm-up; 20,000 with
//!   `--quick`), as growth per 100k events; `--memory` runs only that and prints it;
//! - isolation: revalidation latency of healthy sites alone, then beside failing sites
//!   with backlogs (20 sites × 1,200 events; 4 × 500 with `--quick`); `--isolation` runs
//!   only that and prints it;
//! - history flood: live latency of 1,000 streams (200 with `--quick`) alone, then while
//!   64 clients read a site's history from JetStream back to back on the same delivery;
//!   `--flood` runs only that and prints it;
//! - notify: webhook → browser latency of a site whose revalidation target answers in 50 ms,
//!   with `notify: immediate` and with `after_revalidate`; `--notify` runs only that.

mod baseline;
mod report;
mod scenarios;
mod sse_load;
mod tools;

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("baseline") {
        // The same backlog as the services (4096), so a connection storm meets the same kernel.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(4096)?;
        println!("listening {}", listener.local_addr()?.port());
        baseline::serve(listener).await;
        return Ok(());
    }
    match args.get(1).map(String::as_str) {
        Some("ingest") => tools::ingest::main().await,
        Some("delivery") => tools::delivery::main().await,
        Some("revalidator") => tools::revalidator::main().await,
        _ => return run_suite(&args).await,
    }
    Ok(())
}

/// The suite, or one of its rows (see the module's documentation).
async fn run_suite(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let runs: usize = spool_integration_tests::cli_arg("--runs", if quick { 1 } else { 3 });
    let out: String = spool_integration_tests::cli_arg("--out", "results".to_string());
    raise_fd_limit();
    if let Some(i) = args.iter().position(|a| a == "--latency") {
        let number = |k: usize| args.get(i + k).and_then(|v| v.parse::<u64>().ok());
        let (Some(streams), Some(rate)) = (number(1), number(2)) else {
            anyhow::bail!("usage: spool-bench --latency STREAMS RATE [--seconds S] [--runs N]");
        };
        let seconds = spool_integration_tests::cli_arg("--seconds", 10);
        let streams = usize::try_from(streams)?;
        for rows in scenarios::latency_row(streams, rate, seconds, runs).await? {
            println!("{rows:?}");
        }
        return Ok(());
    }
    if args.iter().any(|a| a == "--memory") {
        println!("{}", memory_row(quick).await);
        return Ok(());
    }
    if args.iter().any(|a| a == "--isolation") {
        println!("{}", isolation_row(quick).await);
        return Ok(());
    }
    if args.iter().any(|a| a == "--flood") {
        println!("{}", flood_row(quick).await);
        return Ok(());
    }
    if args.iter().any(|a| a == "--notify") {
        println!("{}", notify_row(quick).await);
        return Ok(());
    }
    let plan = if quick {
        scenarios::Plan::quick()
    } else {
        scenarios::Plan::full()
    };
    let deadline = if quick {
        Duration::from_secs(150)
    } else {
        Duration::from_secs(3600)
    };
    // On SIGINT/SIGTERM the run is dropped, so its servers are stopped and their temporary
    // stores removed before exiting. (On SIGKILL they die with this process anyway: every
    // child is started with a parent-death signal, see `process::tied_command`.)
    let run = tokio::time::timeout(deadline, scenarios::run_all(&plan, runs));
    let finished = tokio::select! {
        finished = run => Ok(finished),
        signal = interrupted() => Err(signal),
    };
    // The run (and with it every server it started) is dropped by now.
    let results = match finished {
        Ok(finished) => finished
            .map_err(|_| anyhow::anyhow!("the benchmark did not finish within {deadline:?}"))??,
        Err((name, code)) => {
            eprintln!("interrupted by {name}: servers stopped, nothing written");
            std::process::exit(code);
        }
    };
    let written = report::write(&out, &plan, runs, &results)?;
    let memory = memory_row(quick).await;
    let isolation = isolation_row(quick).await;
    let flood = flood_row(quick).await;
    let notify = notify_row(quick).await;
    let mut markdown = std::fs::read_to_string(&written.markdown)?;
    markdown.push_str(&memory);
    markdown.push_str(&isolation);
    markdown.push_str(&flood);
    markdown.push_str(&notify);
    std::fs::write(&written.markdown, markdown)?;
    println!("{}", std::fs::read_to_string(&written.markdown)?);
    println!(
        "written: {} {} {}",
        written.markdown.display(),
        written.json.display(),
        written.svg.display()
    );
    Ok(())
}

/// The memory row: the leak check of the test suite at bench size, on the release build.
async fn memory_row(quick: bool) -> String {
    use spool_integration_tests::memory::{measure, Plan};
    let plan = Plan {
        per_round: if quick { 5_000 } else { 25_000 },
        rounds: 4,
        concurrency: 64,
        failing_every: 20,
    };
    let report = measure(plan).await;
    format!(
        "\n## Memory under steady events\n\n{} webhooks after a warm-up of {} (one in {} to a site whose target always answers 503: retried, then dead-lettered); RSS of each service after each round, growth as the median slope between rounds:\n\n{}",
        report.measured_events(),
        2 * plan.per_round,
        plan.failing_every,
        report.markdown()
    )
}

/// The isolation row: healthy sites' revalidation latency alone, then beside failing sites.
async fn isolation_row(quick: bool) -> String {
    use spool_integration_tests::isolation::{measure, Plan};
    let (failing, backlog, samples) = if quick { (4, 500, 40) } else { (20, 1200, 100) };
    let mut rows = String::new();
    for failing in [0, failing] {
        let report = measure(Plan {
            failing,
            backlog,
            samples,
        })
        .await;
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        rows.push_str(&format!(
            "| {failing} | {} | {} | {} | {} |\n",
            if failing == 0 { 0 } else { backlog },
            ms(report.percentile(0.5)),
            ms(report.percentile(0.99)),
            ms(report.percentile(1.0)),
        ));
    }
    format!(
        "\n## Revalidation isolation\n\nHealthy sites' revalidation latency (webhook accepted → call received, {samples} events one at a time, default settings: 100 ms coalescing window), alone and beside failing sites (targets answering 503, or 429 with `Retry-After: 3600`, alternately), each given a backlog first:\n\n| failing sites | backlog each | p50 (ms) | p99 (ms) | max (ms) |\n|---:|---:|---:|---:|---:|\n{rows}"
    )
}

/// The history-flood row: live latency alone, then while history reads flood the delivery.
async fn flood_row(quick: bool) -> String {
    use spool_integration_tests::flood::{measure, Plan};
    let (streams, samples) = if quick { (200, 40) } else { (1000, 100) };
    let mut rows = String::new();
    for (flood, one_address) in [(0, false), (64, false), (64, true)] {
        let report = measure(Plan {
            streams,
            flood,
            history: 3000,
            window: 1000,
            samples,
            one_address,
        })
        .await;
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        rows.push_str(&format!(
            "| {streams} | {flood} | {} | {:.0} | {:.0} | {} | {} | {} | {} |\n",
            if one_address {
                "one, limited to 50/s"
            } else if flood == 0 {
                "—"
            } else {
                "many (no limit)"
            },
            report.served_per_s,
            report.refused_per_s,
            ms(report.percentile(0.5)),
            ms(report.percentile(0.99)),
            ms(report.percentile(1.0)),
            report.missed,
        ));
    }
    format!(
        "\n## Live latency under a history-read flood\n\nWebhook accepted → each of the streams of one site ({samples} events, 50 ms apart), alone and while clients read another site's 3,000 events from JetStream (`since=1&limit=1000`, older than the 1,000-event window) back to back on the same delivery, ignoring `Retry-After` as an attacker would, default history-read caps (32 per process, 4 per site; the rest answered `429 busy`). The readers come from many addresses (no per-address limit applies), or from one address under the default per-address request limit (50/s, burst 200; the rest answered `429 rate_limited`):\n\n| streams | history readers | their addresses | reads served/s | reads refused/s | p50 (ms) | p99 (ms) | max (ms) | missed |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|\n{rows}"
    )
}

/// The notify row: what holding events until the site's target answered costs.
async fn notify_row(quick: bool) -> String {
    use spool_integration_tests::notify::{measure, Plan};
    let (streams, samples) = if quick { (100, 20) } else { (1000, 50) };
    let mut rows = String::new();
    for after_revalidate in [false, true] {
        let report = measure(Plan {
            streams,
            samples,
            target_ms: 50,
            after_revalidate,
        })
        .await;
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        rows.push_str(&format!(
            "| {} | {streams} | {} | {} | {} | {} |\n",
            if after_revalidate {
                "after_revalidate"
            } else {
                "immediate"
            },
            ms(report.percentile(0.5)),
            ms(report.percentile(0.99)),
            ms(report.percentile(1.0)),
            report.missed,
        ));
    }
    format!(
        "\n## Fresh on notify\n\nWebhook accepted → each stream of one site ({samples} events one at a time), the site's revalidation target answering in 50 ms, default settings (the revalidator merges events of 100 ms into one call):\n\n| notify | streams | p50 (ms) | p99 (ms) | max (ms) | missed |\n|---|---:|---:|---:|---:|---:|\n{rows}"
    )
}

/// Resolves on the first SIGINT or SIGTERM, with its name and the exit code it calls for.
async fn interrupted() -> (&'static str, i32) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => ("SIGINT", 130),
        _ = term.recv() => ("SIGTERM", 143),
    }
}

fn raise_fd_limit() {
    if let Ok((soft, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let want = hard.min(1 << 20);
        if soft < want {
            let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, want, hard);
        }
    }
}
