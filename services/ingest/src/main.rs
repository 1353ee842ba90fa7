use clap::Parser;
use spool_ingest::{Application, IngestConfig};
use spool_platform::shutdown::{cancel_on_signal, CancellationToken};

/// The same allocator as spool-delivery (see there), so that the three services of one
/// image behave alike.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IngestConfig::parse();
    let telemetry =
        spool_platform::telemetry::init(&config.common.log_format, "info", "spool-ingest");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let app = Application::build(config, shutdown).await?;
    tracing::info!(port = app.port(), "spool-ingest listening");
    let result = app.run().await;
    telemetry.shutdown();
    result
}
