//! After trouble and in bulk: clients resuming after a delivery restart, and the
//! revalidator working through a burst.

use super::*;

/// Clients resume after a delivery restart: time until all caught up, and what was missed.
pub(super) async fn resume_storm(
    system: &mut System,
    clients: usize,
) -> anyhow::Result<(f64, u64, u64)> {
    let http = reqwest::Client::new();
    let epoch = Instant::now();
    let options = |system: &System, last_ids: Option<Vec<u64>>| {
        Arc::new(Options {
            addr: system.stream_addr(),
            path: system.stream_path(),
            keep_ids: last_ids.is_some(),
            last_ids,
        })
    };
    let open = Streams::open(clients, options(system, None), epoch);
    open.wait_connected(clients, Duration::from_secs(120))
        .await?;
    let first = System::publish_n(system, &http, 5, epoch).await;
    open.wait_events((first * clients) as u64, Duration::from_secs(60))
        .await;
    // The deploy: the process goes (its streams end), events keep coming, a new one starts.
    let System::Spool { delivery, .. } = &mut *system else {
        anyhow::bail!("needs the spool system")
    };
    delivery.sigterm();
    delivery.wait_exit(Duration::from_secs(30)).await;
    let results = open.close().await;
    let last_ids: Vec<u64> = results.iter().map(|r| r.last_id.unwrap_or(0)).collect();
    let while_down = System::publish_n(system, &http, 50, epoch).await as u64;
    let System::Spool { delivery, env, .. } = &mut *system else {
        anyhow::bail!("needs the spool system")
    };
    *delivery = ServiceProcess::start("spool-delivery", env).await;
    let started = Instant::now();
    let open = Streams::open(clients, options(system, Some(last_ids.clone())), epoch);
    let caught_up = open
        .wait_events(while_down * clients as u64, Duration::from_secs(60))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let (open_connected, open_events) = (
        open.connected.load(Ordering::Relaxed),
        open.events.load(Ordering::Relaxed),
    );
    let results = open.close().await;
    // Exactly the events after each client's id, once each, in order.
    let stream_last = last_ids.iter().copied().max().unwrap_or(0) + while_down;
    let (mut missed, mut duplicates) = (0u64, 0u64);
    for (r, last) in results.iter().zip(&last_ids) {
        let want: Vec<u64> = (last + 1..=stream_last).collect();
        missed += want.iter().filter(|s| !r.ids.contains(s)).count() as u64;
        duplicates += r.ids.len().saturating_sub(want.len()) as u64;
    }
    if !caught_up {
        println!(
            "  resume storm: not all caught up within 60 s ({} of {clients} connected, {} events)",
            open_connected, open_events
        );
    }
    eprintln!("  resume storm: {clients} clients caught up on {while_down} events in {seconds:.2} s; {missed} missed, {duplicates} duplicates");
    Ok((seconds, missed, duplicates))
}

impl System {
    /// Publishes `n` events one by one (each acknowledged); returns how many.
    async fn publish_n(system: &System, http: &reqwest::Client, n: usize, epoch: Instant) -> usize {
        let mut ok = 0;
        for i in 0..n {
            let stamp = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0);
            if system
                .publish(http, 1_000_000 + i as u64 + stamp, stamp)
                .await
            {
                ok += 1;
            }
        }
        ok
    }
}

pub(super) async fn revalidator(system: &System, events: usize) -> anyhow::Result<(f64, usize)> {
    let System::Spool { nats, .. } = system else {
        anyhow::bail!("needs the spool system")
    };
    // Its own site and stream: the revalidator only sees events published after it starts.
    let target = TestReceiver::start([]).await;
    let dir = tempfile::tempdir()?;
    let mut site = site_json("reval");
    site["revalidate"] = serde_json::json!([target.target(None)]);
    let sites = write_sites_file(dir.path(), &[site]);
    let env = vec![
        ("NATS_URL", nats.url()),
        ("SPOOL_SITES_FILE", sites.display().to_string()),
        ("RUST_LOG", "warn".to_string()),
        // The target listens on loopback.
        (
            "SPOOL_ALLOWED_TARGET_NETWORKS",
            LOOPBACK_TARGET_NETWORKS.to_string(),
        ),
    ];
    let ingest = ServiceProcess::start("spool-ingest", &env).await;
    let _revalidator = ServiceProcess::start("spool-revalidator", &env).await;
    let http = reqwest::Client::new();
    let publish = |prefix: &'static str, count: usize| {
        let (http, base) = (http.clone(), ingest.base_url.clone());
        async move {
            let next = AtomicU64::new(0);
            let senders = (0..32).map(|_| async {
                let mut seqs = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count as u64 {
                        return seqs;
                    }
                    let (status, body) =
                        Webhook::published(&format!("{prefix}{i}"), "blog", &i.to_string())
                            .send(&http, &base, "reval")
                            .await;
                    if status == 202 {
                        seqs.extend(body["seq"].as_u64());
                    }
                }
            });
            futures::future::join_all(senders)
                .await
                .into_iter()
                .flatten()
                .collect::<Vec<u64>>()
        }
    };
    let started = Instant::now();
    let seqs = publish("r", events).await;
    target.wait_seqs(&seqs, Duration::from_secs(300)).await;
    let per_s = seqs.len() as f64 / started.elapsed().as_secs_f64();
    let before = target.calls().len();
    let bulk = publish("bulk", 500).await;
    let calls = target
        .wait_seqs(&bulk, Duration::from_secs(120))
        .await
        .len()
        - before;
    eprintln!("  revalidator: {per_s:.0} events/s end to end; a 500-item bulk publish became {calls} calls");
    Ok((per_s, calls))
}
