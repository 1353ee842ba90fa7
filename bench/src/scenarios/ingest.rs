//! Webhooks per second through the ingest (alone, and within the whole system), and raw
//! JetStream publishes for reference.

use super::*;

/// Signed webhooks/s through the ingest at `INGEST_CONCURRENCY`, each answered 202 only
/// after JetStream's ack. As light a client as `make bench-ingest`'s: every webhook is built
/// and signed before the clock starts (signing is the CMS's cost), one keep-alive connection
/// per worker, opened by a warm-up that is not counted.
pub(super) async fn measure_ingest(
    base_url: &str,
    site: &str,
    requests: usize,
    setup: &'static str,
) -> anyhow::Result<Ingest> {
    /// One ready-to-send webhook: the headers that sign it and its body.
    struct Signed {
        id: String,
        timestamp: String,
        signature: String,
        body: bytes::Bytes,
    }
    static BATCH: AtomicU64 = AtomicU64::new(0);
    let batch = BATCH.fetch_add(1, Ordering::Relaxed);
    let sign = |i: usize| {
        let hook = Webhook::published(&format!("ingest{batch}-{i}"), "blog", &i.to_string());
        Signed {
            signature: hook.signature(),
            timestamp: hook.timestamp.to_string(),
            body: bytes::Bytes::from(hook.body),
            id: hook.id,
        }
    };
    let warm_up = INGEST_CONCURRENCY * 8;
    let hooks: Arc<Vec<Signed>> = Arc::new((0..warm_up + requests).map(sign).collect());
    let url: Arc<str> = format!("{base_url}/v1/sites/{site}/webhooks").into();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(INGEST_CONCURRENCY)
        .build()?;
    // Sends hooks[from..to] with INGEST_CONCURRENCY workers (tasks of their own, spread
    // over the runtime's threads); returns each accepted webhook's latency.
    let send = |from: usize, to: usize| {
        let next = Arc::new(AtomicU64::new(from as u64));
        let workers: Vec<_> = (0..INGEST_CONCURRENCY)
            .map(|_| {
                let (hooks, url, http, next) =
                    (hooks.clone(), url.clone(), http.clone(), next.clone());
                tokio::spawn(async move {
                    let (mut latencies, mut failed) = (Vec::new(), 0u64);
                    loop {
                        let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed))
                            .unwrap_or(usize::MAX);
                        let Some(hook) = hooks.get(i).filter(|_| i < to) else {
                            return (latencies, failed);
                        };
                        let t = Instant::now();
                        let answer = http
                            .post(&*url)
                            .header("content-type", "application/json")
                            .header("webhook-id", &hook.id)
                            .header("webhook-timestamp", &hook.timestamp)
                            .header("webhook-signature", &hook.signature)
                            .body(hook.body.clone())
                            .send()
                            .await;
                        let accepted = match answer {
                            Ok(r) => r.status().as_u16() == 202 && r.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        if accepted {
                            latencies.push(t.elapsed());
                        } else {
                            failed += 1;
                        }
                    }
                })
            })
            .collect();
        async move {
            let (mut latencies, mut failed) = (Vec::new(), 0);
            for worker in workers {
                if let Ok((l, f)) = worker.await {
                    latencies.extend(l);
                    failed += f;
                }
            }
            (latencies, failed)
        }
    };
    send(0, warm_up).await;
    let started = Instant::now();
    let (mut latencies, failed) = send(warm_up, warm_up + requests).await;
    let elapsed = started.elapsed();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let result = Ingest {
        setup,
        per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        failed,
    };
    println!(
        "  ingest ({setup}): {:.0} webhooks/s, p50 {:.2} ms, p99 {:.2} ms, {failed} failed",
        result.per_s, result.p50_ms, result.p99_ms
    );
    Ok(result)
}

/// The ingest with nothing but its nats-server: at `warn` (as every service of the suite)
/// and at the default `info`, each a fresh `spool-ingest` process.
pub(super) async fn ingest_alone(requests: usize) -> anyhow::Result<Vec<Ingest>> {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir()?;
    let sites = write_sites_file(dir.path(), &[site_json(SITE)]);
    let mut results = Vec::new();
    for (setup, level) in [(INGEST_ALONE, "warn"), (INGEST_ALONE_INFO, "info")] {
        let env = vec![
            ("NATS_URL", nats.url()),
            ("SPOOL_SITES_FILE", sites.display().to_string()),
            ("RUST_LOG", level.to_string()),
        ];
        let ingest = ServiceProcess::start("spool-ingest", &env).await;
        results.push(measure_ingest(&ingest.base_url, SITE, requests, setup).await?);
    }
    Ok(results)
}

/// The ingest of the running system (a delivery consuming every event meanwhile).
pub(super) async fn ingest_in_system(system: &System, requests: usize) -> anyhow::Result<Ingest> {
    let System::Spool { ingest, .. } = system else {
        anyhow::bail!("ingest needs the spool system")
    };
    measure_ingest(&ingest.base_url, SITE, requests, INGEST_SYSTEM).await
}

/// Raw JetStream publish-acks/s on the same server: the bound for the ingest.
pub(super) async fn jetstream(system: &System, messages: usize) -> anyhow::Result<f64> {
    let System::Spool { nats, .. } = system else {
        anyhow::bail!("needs the spool system")
    };
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 400]);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..messages {
        if in_flight.len() >= 256 {
            if let Some(r) = in_flight.next().await {
                let _: Result<_, _> = r;
            }
        }
        let ack = js.publish("bench.raw", payload.clone()).await?;
        in_flight.push(std::future::IntoFuture::into_future(ack));
    }
    while in_flight.next().await.is_some() {}
    let per_s = messages as f64 / started.elapsed().as_secs_f64();
    eprintln!("  raw JetStream: {per_s:.0} publish-acks/s");
    Ok(per_s)
}
